import gzip
import json

import pytest

from conftest import SHARED_DATA, write_jsonl
from posttrain.data import formats


def parse(row):
    fmt = formats.detect(row)
    assert fmt is not None, row
    return fmt.name, fmt.parse(row)


def test_alpaca_with_and_without_input():
    name, ex = parse({"instruction": "Translate.", "input": "Bonjour", "output": "Hello"})
    assert name == "alpaca"
    assert ex.messages == [{"role": "user", "content": "Translate.\n\nBonjour"},
                           {"role": "assistant", "content": "Hello"}]
    _, ex = parse({"instruction": "Say hi.", "input": "", "output": "Hi"})
    assert ex.messages[0]["content"] == "Say hi."


def test_sharegpt_roles_system_and_multi_turn():
    name, ex = parse({"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
        {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]})
    assert name == "sharegpt"
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_sharegpt_unknown_speaker_is_a_row_error():
    with pytest.raises(formats.RowError) as err:
        formats.parse_sharegpt({"conversations": [{"from": "robot", "value": "x"}]})
    assert err.value.reason == "wrong_type"


def test_openai_messages_keep_extra_fields_as_meta():
    name, ex = parse({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                      "constraint": {"type": "uppercase"}})
    assert name == "openai"
    assert ex.meta == {"constraint": {"type": "uppercase"}}


def test_openai_bad_role_and_missing_content():
    with pytest.raises(formats.RowError):
        formats.parse_openai({"messages": [{"role": "wizard", "content": "x"}]})
    with pytest.raises(formats.RowError):
        formats.parse_openai({"messages": [{"role": "user"}]})


def test_prompt_completion_strings_and_lists():
    name, ex = parse({"prompt": "2+3?", "completion": "5"})
    assert name == "prompt_completion" and ex.messages[-1] == {"role": "assistant", "content": "5"}
    _, ex = parse({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]})
    assert len(ex.messages) == 2


def test_preference_strings_with_prompt():
    name, ex = parse({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    assert name == "preference"
    assert ex.messages == [{"role": "user", "content": "2+2?"}]
    assert ex.chosen == [{"role": "assistant", "content": "4"}]
    assert ex.rejected == [{"role": "assistant", "content": "5"}]


def test_unpaired_ratings_for_kto_and_their_label_checked():
    name, ex = parse({"prompt": "2+2?", "completion": "4", "label": True, "rater": "ann"})
    assert name == "unpaired" and ex.label is True and ex.meta == {"rater": "ann"}
    assert ex.completion == [{"role": "assistant", "content": "4"}] and ex.chosen is None
    assert parse({"prompt": "2+2?", "completion": "5", "label": "down"})[1].label is False
    with pytest.raises(formats.RowError, match="label must be true or false"):
        parse({"prompt": "2+2?", "completion": "5", "label": 1})
    assert formats.detect({"prompt": "2+2?", "completion": "4"}).name == "prompt_completion"   # no label: SFT


def test_preference_message_lists_without_prompt_share_the_prefix():
    user = {"role": "user", "content": "Hi"}
    _, ex = parse({"chosen": [user, {"role": "assistant", "content": "Hello!"}],
                   "rejected": [user, {"role": "assistant", "content": "Go away."}]})
    assert ex.messages == [user]
    assert ex.chosen[0]["content"] == "Hello!" and ex.rejected[0]["content"] == "Go away."


def test_anthropic_hh_transcripts_multi_turn():
    chosen = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour.\n\nHuman: Then?\n\nAssistant: Bake it at 220C."
    rejected = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour.\n\nHuman: Then?\n\nAssistant: No idea."
    _, ex = parse({"chosen": chosen, "rejected": rejected})
    assert [m["role"] for m in ex.messages] == ["user", "assistant", "user"]
    assert ex.messages[2]["content"] == "Then?"
    assert ex.chosen == [{"role": "assistant", "content": "Bake it at 220C."}]
    assert ex.rejected == [{"role": "assistant", "content": "No idea."}]


def test_qa_gsm8k_final_answer():
    name, ex = parse({"question": "Q?", "answer": "3 * 4 = 12 apples, plus 1,000.\n#### 1,012"})
    assert name == "qa"
    assert ex.answer == "1012"
    assert ex.messages[-1]["content"].endswith("#### 1,012")


def test_qa_plain_answer_and_prompt_only():
    assert parse({"question": "Q?", "answer": "42"})[1].answer == "42"
    name, ex = parse({"prompt": "How do I kill a Python process?"})
    assert name == "prompt" and ex.answer is None


def test_unknown_format_lists_supported_ones():
    recs = [formats.Record("f.jsonl:1", {"text": "hello"})]
    with pytest.raises(ValueError) as err:
        formats.detect_format(recs, "f.jsonl")
    msg = str(err.value)
    for name in formats.FORMATS:
        assert name in msg
    assert "['text']" in msg


def test_readers_jsonl_gz_json_array_parquet_and_malformed_lines(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(3)]
    gz = tmp_path / "a.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(json.dumps(rows[0]) + "\n{broken\n" + json.dumps(rows[1]) + "\n")
    recs = list(formats.read_records(str(gz)))
    assert [r.locator for r in recs] == [f"{gz}:1", f"{gz}:2", f"{gz}:3"]
    assert recs[1].error.reason == "malformed_json" and recs[1].raw == "{broken"

    arr = tmp_path / "a.json"
    arr.write_text(json.dumps(rows))
    assert [r.data for r in formats.read_records(str(arr))] == rows

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    recs = list(formats.read_records(str(tmp_path / "a.parquet")))
    assert [r.data for r in recs] == rows and recs[2].locator.endswith("a.parquet:row 3")


def test_hub_source_path_with_a_local_dataset_folder(tmp_path):
    """The production path (datasets.load_dataset by name) run on a local dataset folder."""
    folder = tmp_path / "my_dataset"
    write_jsonl(folder / "train.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}])
    write_jsonl(folder / "test.jsonl", [{"prompt": "e", "completion": "f"}])
    recs = list(formats.read_records(f"hf:{folder}?split=test"))
    assert [r.data for r in recs] == [{"prompt": "e", "completion": "f"}]
    with pytest.raises(ValueError, match="unknown option"):
        list(formats.read_records(f"hf:{folder}?splitt=test"))



def test_an_edited_local_dataset_folder_gives_its_new_rows(tmp_path):
    """datasets caches a folder with a card's `configs` by the folder: without reading it afresh, a
    second read gave the first read's rows (or failed on the split sizes it recorded then)."""
    folder = tmp_path / "cards"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                      "  - split: test_prefs\n    path: data/test_prefs-*\n---\n")
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(6)]
    write_jsonl(folder / "data/test_prefs-00000-of-00001.jsonl", rows[:2])
    assert len(list(formats.read_records(f"hf:{folder}?split=test_prefs"))) == 2
    write_jsonl(folder / "data/test_prefs-00000-of-00001.jsonl", rows)
    assert [r.data for r in formats.read_records(f"hf:{folder}?split=test_prefs")] == rows


def test_real_gsm8k_rows_parse():
    path = SHARED_DATA / "gsm8k_train_1000.jsonl"
    recs = list(formats.read_records(str(path)))
    assert len(recs) == 1000
    fmt = formats.detect_format(recs, str(path))
    assert fmt.name == "qa"
    answers = [fmt.parse(r.data).answer for r in recs]
    assert all(a.lstrip("-").replace(".", "").isdigit() for a in answers)
    assert answers[0] == "72"  # Natalia's clips
