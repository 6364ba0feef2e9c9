"""`posttrain lineage`: an artifact's inputs, followed through manifests back to raw files."""

import json
from pathlib import Path

from posttrain.cli import main
from posttrain.core import lineage
from posttrain.core.manifest import write_manifest


def _chain(root: Path) -> None:
    """raw.jsonl -> results/data (prepare-data) -> results/model (sft, from a hub base)."""
    (root / "raw.jsonl").write_text('{"prompt": "hi", "completion": "hello"}\n')
    (root / "results/data").mkdir(parents=True)
    (root / "results/data/train.jsonl").write_text("{}\n")
    write_manifest(root / "results/data", stage="prepare-data:sft", params={}, seed=0, inputs={"input0": "raw.jsonl"})
    (root / "results/model").mkdir()
    write_manifest(root / "results/model", stage="sft", params={"base": "Qwen/Qwen3-30B-A3B-Base"}, seed=0,
                   inputs={"data": "results/data", "train": "results/data/train.jsonl"})


def test_lineage_reaches_the_raw_input_and_marks_what_changed_since(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _chain(tmp_path)
    node = lineage.trace("results/model")
    assert node.stage == "sft" and node.source == "Qwen/Qwen3-30B-A3B-Base"
    data = node.inputs["data"]
    assert data.artifact == "results/data" and data.stage == "prepare-data:sft"
    raw = data.inputs["input0"]
    assert raw.artifact is None and raw.status == "ok" and raw.recorded
    assert node.inputs["train"].artifact == "results/data" and node.inputs["train"].repeated

    (tmp_path / "raw.jsonl").write_text('{"prompt": "hi", "completion": "bye"}\n')
    assert main(["lineage", "results/model"]) == 0
    tree = capsys.readouterr().out
    assert "input0: raw.jsonl raw input, sha256" in tree and "!! changed since it was used" in tree
    assert "(in results/data) (see above)" in tree
    assert main(["lineage", "results/model", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inputs"]["data"]["inputs"]["input0"]["status"] == "changed"


def test_lineage_of_a_folder_without_manifest_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results/half").mkdir(parents=True)
    assert main(["lineage", "results/half"]) == 1
    assert "results/half has no manifest.json" in capsys.readouterr().err
