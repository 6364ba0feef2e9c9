"""Data files as users have them, each written by the tool that makes it (Python's json, csv and
codecs as Windows and macOS tools write, pandas, pyarrow, datasets' save_to_disk, the hub cache's
layout): read by content, never by name, and every row accounted for in the data stage's report."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, read_jsonl
from posttrain.data import formats

SHAREGPT = [{"conversations": [{"from": "human", "value": f"Name a colour number {i}."},
                               {"from": "gpt", "value": f"Colour {i}: blue, like the sky on day {i}."}]}
            for i in range(12)]
ALPACA = [{"instruction": f"Add {i} and {i + 3}.", "input": "", "output": f"{i} + {i + 3} = {2 * i + 3}"}
          for i in range(10)]
MESSAGES = [{"messages": [{"role": "user", "content": f"Say hello to person {i}."},
                          {"role": "assistant", "content": f"Hello, person {i}! Nice to meet you."}]}
            for i in range(10)]


def _jsonl(rows, newline="\n") -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + newline for r in rows)


def _write(path: Path, text: str, encoding="utf-8", newline="") -> Path:
    with open(path, "w", encoding=encoding, newline=newline) as fh:
        fh.write(text)
    return path


def _zstd(path: Path, data: bytes) -> Path:
    import pyarrow as pa

    with pa.CompressedOutputStream(str(path), "zstd") as fh:
        fh.write(data)
    return path


# name -> (builder(tmp) -> path, the rows it holds, what the reader reports)
CASES = {
    # Windows tools (PowerShell's `Set-Content -Encoding UTF8`, Notepad) write a BOM and CRLF
    "sharegpt_json_array_utf8_bom_crlf": (
        lambda d: _write(d / "export.json", json.dumps(SHAREGPT, indent=2).replace("\n", "\r\n"), "utf-8-sig"),
        SHAREGPT, {"encoding": "UTF-8 with byte-order mark", "layout": "json array"}),
    "jsonl_utf8": (lambda d: _write(d / "rows.jsonl", _jsonl(MESSAGES)), MESSAGES,
                   {"encoding": "UTF-8", "layout": "json lines", "container": "plain"}),
    # Notepad's "Unicode": UTF-16 LE with a BOM
    "jsonl_utf16_bom": (lambda d: _write(d / "rows.jsonl", _jsonl(MESSAGES, "\r\n"), "utf-16"), MESSAGES,
                        {"encoding": "UTF-16 with byte-order mark", "layout": "json lines"}),
    # classic Mac line endings
    "jsonl_cr": (lambda d: _write(d / "rows.txt", _jsonl(ALPACA, "\r")), ALPACA, {"layout": "json lines"}),
    "json_object_data": (lambda d: _write(d / "rows.json", json.dumps({"version": 2, "data": ALPACA})), ALPACA,
                         {"layout": "json object", "key": "data"}),
    "json_object_train_pretty": (lambda d: _write(d / "rows.json", json.dumps({"train": MESSAGES}, indent=1)),
                                 MESSAGES, {"layout": "json object", "key": "train"}),
    "jsonl_gzip_named_json": (lambda d: _bytes(d / "rows.json", gzip.compress(_jsonl(ALPACA).encode())), ALPACA,
                              {"container": "gzip", "layout": "json lines"}),
    "jsonl_bz2": (lambda d: _bytes(d / "rows.jsonl.bz2", bz2.compress(_jsonl(ALPACA).encode())), ALPACA,
                  {"container": "bz2"}),
    "jsonl_xz": (lambda d: _bytes(d / "rows.jsonl.xz", lzma.compress(_jsonl(ALPACA).encode())), ALPACA,
                 {"container": "xz"}),
    "jsonl_zstd": (lambda d: _zstd(d / "rows.jsonl.zst", _jsonl(MESSAGES).encode()), MESSAGES, {"container": "zstd"}),
    "parquet_named_bin": (lambda d: _parquet(d / "rows.bin", ALPACA), ALPACA, {"container": "parquet"}),
    "csv_pandas_messages_column": (lambda d: _pandas_csv(d / "rows.csv", MESSAGES), MESSAGES,
                                   {"layout": "csv (delimiter ',')"}),
    # Excel's "CSV UTF-8": a BOM, CRLF
    "csv_excel_bom": (lambda d: _csv(d / "rows.csv", ALPACA, "utf-8-sig", ","), ALPACA,
                      {"encoding": "UTF-8 with byte-order mark", "layout": "csv (delimiter ',')"}),
    "tsv": (lambda d: _csv(d / "rows.tsv", ALPACA, "utf-8", "\t"), ALPACA, {"layout": "tsv"}),
    "datasets_save_to_disk": (lambda d: _saved(d / "saved", ALPACA), ALPACA, {"container": "datasets folder"}),
}


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _parquet(path: Path, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _pandas_csv(path: Path, rows) -> Path:
    import pandas as pd

    pd.DataFrame([{"messages": json.dumps(r["messages"])} for r in rows]).to_csv(path, index=False)
    return path


def _csv(path: Path, rows, encoding, delimiter) -> Path:
    with open(path, "w", encoding=encoding, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _saved(path: Path, rows) -> Path:
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("case", CASES)
def test_each_file_is_read_by_its_content(case, tmp_path):
    build, rows, expected = CASES[case]
    path = build(tmp_path)
    info: dict = {}
    records = list(formats.read_records(str(path), info))
    assert [r.error for r in records] == [None] * len(rows), [r.error for r in records if r.error]
    assert [r.data for r in records] == rows
    assert expected.items() <= info.items(), info


@pytest.mark.parametrize("case", CASES)
def test_the_data_stage_accounts_for_every_row(case, tmp_path, data_params):
    """rows_in == rows_out + every drop, and each drop is in rejected.jsonl with its place and reason;
    what the reader found is in the report."""
    from posttrain.stages import prepare_data

    build, rows, expected = CASES[case]
    path = build(tmp_path)
    extra = tmp_path / "extra.jsonl"          # a second source with a malformed line and a duplicate
    extra.write_text(_jsonl(rows[:1]) + "{not json\n")
    report = prepare_data.main(data_params, "sft", [str(path), str(extra)], tmp_path / "out")
    assert report["rows_in"] == len(rows) + 2
    assert report["rows_in"] == report["rows_out"] + sum(report["dropped"].values())
    rejected = read_jsonl(tmp_path / "out/rejected.jsonl")
    assert len(rejected) == sum(report["dropped"].values()) >= 2
    assert {r["reason"] for r in rejected} >= {"malformed_json", "duplicate"}
    assert all(r["source"].startswith(str(tmp_path)) and r["detail"] for r in rejected)
    assert f"{extra}:2" in {r["source"] for r in rejected}
    assert expected.items() <= report["sources"][str(path)]["read"].items()


def test_a_file_that_mixes_formats_is_read_row_by_row_and_reported(tmp_path, data_params):
    from posttrain.stages import prepare_data

    path = _write(tmp_path / "mixed.jsonl", _jsonl(SHAREGPT + ALPACA[:3]))
    report = prepare_data.main(data_params, "sft", [str(path)], tmp_path / "out")
    source = report["sources"][str(path)]
    assert source["format"] == "sharegpt" and source["other_formats"] == {"alpaca": 3}
    assert source["rows_out"] == len(SHAREGPT) + 3 and not source["dropped"]


def test_normalisation_is_counted_by_kind(tmp_path, data_params):
    from posttrain.stages import prepare_data

    rows = [{"messages": [{"role": "user", "content": "Cafe\u0301 menu?"},          # decomposed accent
                          {"role": "assistant", "content": "Coffee and cake."}]},
            {"messages": [{"role": "user", "content": "Line one\r\nline two"},       # CRLF inside the text
                          {"role": "assistant", "content": "Two lines."}]},
            {"messages": [{"role": "user", "content": "Zero\u200bwidth here"},        # an invisible character
                          {"role": "assistant", "content": "Seen."}]},
            {"messages": [{"role": "user", "content": "Too   many spaces"},
                          {"role": "assistant", "content": "Fixed."}]}]
    path = _write(tmp_path / "n.jsonl", _jsonl(rows))
    modified = prepare_data.main(data_params, "sft", [str(path)], tmp_path / "out")["modified"]
    assert modified["normalized"] == 4
    assert {k: modified[k] for k in modified if k.startswith("normalized_")} == {
        "normalized_unicode": 1, "normalized_newlines": 1, "normalized_invisible": 1, "normalized_whitespace": 1}


@pytest.mark.parametrize("content, message", [
    (_jsonl(ALPACA).encode("utf-16-le"), "NUL bytes .* no byte-order mark: it looks like UTF-16"),
    (b"PK\x03\x04" + b"\x00" * 40, "a zip archive; unpack it"),
    ('{"instruction": "caf\xe9"}\n'.encode("latin-1"), r"not valid UTF-8 \(byte 0xe9"),
    (b"\x89PNG\r\n\x1a\n" + b"\x01" * 40, r"not valid UTF-8 \(byte 0x89"),
    (b"<html><body>Export failed</body></html>\n", "not JSON, JSON Lines, CSV or TSV: it starts with '<html>"),
])
def test_what_cannot_be_read_is_named(content, message, tmp_path):
    path = _bytes(tmp_path / "data.json", content)
    with pytest.raises(ValueError, match=message):
        list(formats.read_records(str(path)))


def test_a_dataset_dict_folder_names_its_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ALPACA), "test": Dataset.from_list(ALPACA[:2])}).save_to_disk(
        str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"a DatasetDict saved with save_to_disk, splits \['test', 'train'\]"):
        list(formats.read_records(str(tmp_path / "dd")))


def test_a_hub_dataset_is_read_offline_from_the_hub_cache(tmp_path):
    """The production path on a compute node without internet: the dataset downloaded beforehand
    (`huggingface-cli download --repo-type dataset openai/gsm8k --revision SHA`) sits in the hub
    cache; `hf:openai/gsm8k?...&revision=SHA` reads that snapshot, and no other revision."""
    import shutil

    sha = "740312add88f781978c0658806c59bc2815b9866"
    repo = tmp_path / "hub" / "datasets--openai--gsm8k"
    shutil.copytree(ROOT / "tests/data/hub/openai/gsm8k", repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    read = ("import sys\nfrom posttrain.data import formats\n"
            "print(len([r for r in formats.read_records(sys.argv[1]) if r.data]))")
    spec = "hf:openai/gsm8k?name=main&split=test&revision={}"
    res = subprocess.run([sys.executable, "-c", read, spec.format(sha)], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.split()[-1] == "20", res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-c", read, spec.format("0" * 40)], env=env, capture_output=True, text=True)
    assert res.returncode != 0 and "Couldn't reach 'openai/gsm8k' on the Hub" in res.stderr


@pytest.fixture
def data_params(tmp_path, monkeypatch):
    """params for the data stage on small files: no near-duplicate pass, no decontamination."""
    from posttrain.config import load_params

    monkeypatch.chdir(tmp_path)                   # the quarantine folder goes under logs/ here
    params = load_params([ROOT / "params.yaml"])
    params.data.cleaning.near_dup = False
    params.data.max_reject_ratio = 0.5
    return params

