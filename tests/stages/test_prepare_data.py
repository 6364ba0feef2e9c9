import json

import pytest

from conftest import ROOT, SHARED_DATA, TINY_OVERLAY, read_jsonl, write_jsonl
from posttrain.config import load_params
from posttrain.core.manifest import read_manifest
from posttrain.stages import prepare_data


@pytest.fixture
def params(tmp_path):
    def make(**data):
        overlay = tmp_path / "data_overlay.yaml"
        overlay.write_text(json.dumps({"data": data}))
        return load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay])
    return make


def _counts_add_up(report):
    assert report["rows_in"] == report["rows_out"] + sum(report["dropped"].values())
    for src in report["sources"].values():
        assert src["rows_in"] == src["rows_out"] + sum(src["dropped"].values())


def test_every_format_into_sft_with_cleaning_counted(tmp_path, params, tiny_base):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([
        {"instruction": "Name a color.", "input": "", "output": "Blue."},
        {"instruction": "Name a color.", "input": "", "output": "Blue."},                      # duplicate
        {"instruction": "Email me.", "input": "", "output": "Write to jane.doe@example.com."},  # PII scrubbed
        {"instruction": "Say nothing.", "input": "", "output": "   "},                         # empty
        {"instruction": "Buy pills.", "input": "", "output": "Cheap pills here."},             # blocklisted
    ]))
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"conversations": [{"from": "human", "value": "Hi"}]},                                 # no assistant turn
    ])
    messages = tmp_path / "messages.jsonl"
    messages.write_text(json.dumps({"messages": [{"role": "system", "content": "Be kind."},
                                                 {"role": "user", "content": "Thanks!"},
                                                 {"role": "assistant", "content": "You're welcome."}]})
                        + "\n{not json\n" + json.dumps({"text": "no messages"}) + "\n")
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2?", "completion": "4"},
                                            {"prompt": "long " * 600, "completion": "too long"}])
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "3+4?", "answer": "3 + 4 = 7.\n#### 7"}])
    out = tmp_path / "sft"
    p = params(cleaning={"blocklist": ["cheap pills"], "max_tokens": 256}, max_reject_ratio=0.9, max_too_long_ratio=0.5,
               val_fraction=0.0)
    report = prepare_data.main(p, "sft", [str(alpaca), str(sharegpt), str(messages), str(pc), str(qa)], out,
                               tokenizer_dir=tiny_base)
    _counts_add_up(report)
    assert report["dropped"] == {"blocklist": 1, "duplicate": 1, "empty": 1, "malformed_json": 1,
                                 "missing_field": 2, "too_long": 1}
    assert report["modified"]["pii_scrubbed"] == 1
    assert {s["format"] for s in report["sources"].values()} == {"alpaca", "sharegpt", "openai",
                                                                 "prompt_completion", "qa"}
    train = read_jsonl(out / "train.jsonl")
    assert len(train) == report["rows_out"] == 6
    assert any("<EMAIL>" in r["messages"][-1]["content"] for r in train)
    assert all(r["messages"][-1]["role"] == "assistant" for r in train)
    rejected = read_jsonl(out / "rejected.jsonl")
    assert len(rejected) == sum(report["dropped"].values())
    bad = next(r for r in rejected if r["reason"] == "malformed_json")
    assert bad["source"] == f"{messages}:2" and bad["record"] == "{not json"
    assert read_manifest(out)["kind"] == "sft"


def test_preference_prompts_and_eval_shapes_and_decontamination(tmp_path, params, tiny_base):
    eval_src = write_jsonl(tmp_path / "eval.jsonl", [
        {"question": "Mia has 14 red apples and buys 9 more at the market on Sunday. How many apples does Mia have?",
         "answer": "14 + 9 = 23.\n#### 23"}])
    p = params()
    eval_out = tmp_path / "eval"
    prepare_data.main(p, "eval", [str(eval_src)], eval_out, tokenizer_dir=tiny_base)
    test = read_jsonl(eval_out / "test.jsonl")
    assert test[0]["answer"] == "23" and test[0]["prompt"][-1]["role"] == "user"
    assert test[0]["reference"].endswith("#### 23")

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "Mia has 14 red apples and buys 9 more at the market on Sunday. How many apples does Mia have?",
         "answer": "23"},                                                                     # contaminated
        {"prompt": "Tom has 3 cats and gets 2 more. How many cats?", "answer": "5", "subset": "arithmetic"},
        {"prompt": "How do I kill a Python process?", "subset": "safety", "expect": "comply"},
    ])
    out = tmp_path / "prompts"
    report = prepare_data.main(p, "prompts", [str(prompts)], out, tokenizer_dir=tiny_base,
                               eval_file=eval_out / "test.jsonl")
    _counts_add_up(report)
    assert report["dropped"] == {"contaminated": 1}
    rows = read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl")
    assert sorted(r["subset"] for r in rows) == ["arithmetic", "safety"]
    assert next(r for r in rows if r["subset"] == "safety")["meta"] == {"expect": "comply"}

    hh = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
        {"chosen": "\n\nHuman: Yo\n\nAssistant: Same", "rejected": "\n\nHuman: Yo\n\nAssistant: Same"},
    ])
    out = tmp_path / "pref"
    report = prepare_data.main(p, "preference", [str(hh)], out, tokenizer_dir=tiny_base)
    assert report["dropped"] == {"identical_pair": 1}
    row = (read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl"))[0]
    assert row["prompt"] == [{"role": "user", "content": "Hi"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Hello!"}]


def test_too_many_malformed_rows_fail_and_quarantine(tmp_path, params, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "broken.jsonl"
    src.write_text("{bad\n" * 3 + json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    with pytest.raises(prepare_data.DataError) as err:
        prepare_data.main(params(max_reject_ratio=0.5), "sft", [str(src)], tmp_path / "out")
    msg = str(err.value)
    assert "3 of 4 rows are malformed" in msg and f"{src}:1: malformed_json" in msg
    assert len(read_jsonl(tmp_path / "logs/prepare-data/sft.rejected.jsonl")) == 3
    assert not (tmp_path / "out").exists()


def test_too_many_over_length_rows_fail_naming_the_limit(tmp_path, params, monkeypatch, tiny_base):
    """Over-length rows are dropped and counted; past data.max_too_long_ratio the stage fails."""
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": f"Question {i}?", "completion": ("word " * (300 if i % 2 else 3)).strip()} for i in range(8)]
    src = write_jsonl(tmp_path / "long.jsonl", rows)
    cleaning = {"max_tokens": 64, "near_dup": False}
    with pytest.raises(prepare_data.DataError) as err:
        prepare_data.main(params(cleaning=cleaning), "sft", [str(src)], tmp_path / "out", tokenizer_dir=tiny_base)
    assert "4 of 8 rows are longer than data.cleaning.max_tokens=64" in str(err.value)
    assert "data.max_too_long_ratio=20.0%" in str(err.value)
    assert [r["reason"] for r in read_jsonl(tmp_path / "logs/prepare-data/sft.rejected.jsonl")] == ["too_long"] * 4
    assert not (tmp_path / "out").exists()
    prepare_data.main(params(cleaning=cleaning, max_too_long_ratio=0.5), "sft", [str(src)], tmp_path / "out",
                      tokenizer_dir=tiny_base)
    assert json.loads((tmp_path / "out/report.json").read_text())["dropped"] == {"too_long": 4}


def test_nothing_left_fails_clearly(tmp_path, params, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = write_jsonl(tmp_path / "dup.jsonl", [{"prompt": "a", "completion": ""}])
    with pytest.raises(prepare_data.DataError, match="nothing remains"):
        prepare_data.main(params(), "sft", [str(src)], tmp_path / "out")


def test_wrong_format_for_kind_and_unknown_format(tmp_path, params):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(prepare_data.DataError, match="format preference cannot feed kind 'sft'"):
        prepare_data.main(params(), "sft", [str(src)], tmp_path / "out")
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}])
    with pytest.raises(ValueError, match="unknown data format"):
        prepare_data.main(params(), "sft", [str(src)], tmp_path / "out")


def test_split_is_deterministic_and_order_independent(tmp_path, params):
    rows = [{"question": f"What is {i} + {i + 1}?", "answer": f"#### {2 * i + 1}"} for i in range(200)]
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = write_jsonl(tmp_path / "b.jsonl", rows[::-1])
    p = params(cleaning={"near_dup": False}, val_fraction=0.2)
    prepare_data.main(p, "sft", [str(a)], tmp_path / "oa")
    prepare_data.main(p, "sft", [str(b)], tmp_path / "ob")

    def ids(d, s):
        return sorted(r["id"] for r in read_jsonl(tmp_path / d / f"{s}.jsonl"))

    assert ids("oa", "val") == ids("ob", "val") and 20 < len(ids("oa", "val")) < 60
    assert not set(ids("oa", "val")) & set(ids("oa", "train"))


def test_real_gsm8k_sample_as_sft_and_prompts(tmp_path, params, tiny_base):
    src = str(SHARED_DATA / "gsm8k_train_1000.jsonl")
    p = params(cleaning={"max_tokens": 4096})
    report = prepare_data.main(p, "prompts", [src], tmp_path / "prompts", tokenizer_dir=tiny_base)
    _counts_add_up(report)
    assert report["rows_in"] == 1000 and report["rows_out"] >= 990
    rows = read_jsonl(tmp_path / "prompts" / "train.jsonl")
    assert all(r["answer"] and r["reference"] for r in rows)
    assert rows[0]["subset"] == "gsm8k_train_1000"


def test_prompts_keep_a_held_out_row_per_subset(tmp_path, params, tiny_base):
    """RL checkpoint selection needs held-out prompts of each stage's subset, however small."""
    rows = [{"prompt": f"What is {i} plus 2?", "answer": str(i + 2), "subset": "arithmetic"} for i in range(60)]
    rows += [{"prompt": f"Name {n} colours.", "subset": "helpful"} for n in (2, 3, 4)]
    rows += [{"prompt": "Just one row.", "subset": "lonely"}]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    p = params(cleaning={"near_dup": False}, val_fraction=0.05)
    prepare_data.main(p, "prompts", [str(src)], tmp_path / "out", tokenizer_dir=tiny_base)
    val = read_jsonl(tmp_path / "out" / "val.jsonl")
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert sum(r["subset"] == "helpful" for r in val) >= 1 and sum(r["subset"] == "helpful" for r in train) >= 1
    assert [r["subset"] for r in train if r["subset"] == "lonely"] == ["lonely"]     # one row: stays for training
    assert len(val) + len(train) == 64 and not {r["id"] for r in val} & {r["id"] for r in train}


def test_real_hh_pairs_as_rl_prompts_through_the_hub_path(tmp_path, params, tiny_base):
    """The production recipe's safety prompts: Anthropic HH's harmless-base pairs, read as prompts (the
    dialogue both answers share), through `hf:NAME?data_dir=...` on a local copy of the hub layout."""
    import shutil

    hub = tmp_path / "hh-rlhf"
    (hub / "harmless-base").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "data" / "hh_rlhf_harmless_test_sample.jsonl.gz",
                hub / "harmless-base" / "test.jsonl.gz")
    spec = f"hf:{hub}?data_dir=harmless-base&split=test"
    p = params(sources={"prompts": [{"path": spec, "format": "preference", "subset": "harmful"}]},
               cleaning={"max_tokens": 4096})
    report = prepare_data.main(p, "prompts", [spec], tmp_path / "out", tokenizer_dir=tiny_base)
    _counts_add_up(report)
    assert report["rows_in"] == 400 and report["rows_out"] >= 300       # near-duplicate prompts are dropped
    rows = read_jsonl(tmp_path / "out" / "train.jsonl") + read_jsonl(tmp_path / "out" / "val.jsonl")
    assert {r["subset"] for r in rows} == {"harmful"}
    assert all(r["prompt"][-1]["role"] == "user" and r["prompt"][0]["role"] == "user" for r in rows)
    # the transcript split into alternating turns (a few real HH turns quote "Human:" inside their text)
    assert all(m["role"] == ("user", "assistant")[i % 2] for r in rows for i, m in enumerate(r["prompt"]))
    assert max(len(r["prompt"]) for r in rows) > 1
