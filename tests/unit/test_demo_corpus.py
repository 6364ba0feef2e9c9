"""Tests for the demo corpus generator and the format constraints it shares with evaluation."""

from __future__ import annotations

import collections
import itertools
import json
import operator
import os
import re
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.demo import corpus as dc
from posttrain.verifiers.constraints import (
    CONSTRAINT_TYPES,
    check_constraint,
    constraint_instruction,
    find_constraint,
    validate_constraint,
)

SRC = Path(dc.__file__).resolve().parents[1]

# --- helpers (independent of the generator's own code where it matters) ----------------------

_TOKEN = re.compile(r"\w+")
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PHONE = re.compile(r"\+?\d{1,3}[\s.-]\d{3}[\s.-]\d{3}[\s.-]\d{4}|\b\d{3}[\s.-]\d{3}[\s.-]\d{4}\b")
HH_SPLIT = re.compile(r"\n\n(Human|Assistant): ")
REFUSAL = re.compile(r"^(I can't help|Sorry, I can't help|Sorry, but I can't help|I'm not able to help|"
                     r"I won't help|No, I can't help)")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def read_corpus(paths: dict[str, Path]) -> tuple[dict[str, list], list[tuple[str, str]]]:
    """{name: rows} plus the lines that do not parse as JSON."""
    data, bad = {}, []
    for name, path in paths.items():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data[name] = json.loads(text)
            continue
        rows = []
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad.append((name, line))
        data[name] = rows
    return data, bad


def hh_turns(transcript: str) -> list[tuple[str, str]]:
    """[(human, assistant), ...] of an Anthropic-HH transcript."""
    parts = HH_SPLIT.split(transcript)
    assert parts[0] == "", repr(transcript[:40])
    roles, texts = parts[1::2], parts[2::2]
    assert roles == ["Human", "Assistant"] * (len(roles) // 2) and len(roles) % 2 == 0, roles
    return list(zip(texts[0::2], texts[1::2]))


def strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def user_prompts(name: str, row: dict) -> list[str]:
    """The user-side text of a row, per its format."""
    if name == "sft_alpaca":
        return [row["instruction"]] + ([row["input"]] if row["input"] else [])
    if name == "sft_sharegpt":
        return [t["value"] for t in row["conversations"] if t["from"] == "human"]
    if name == "sft_messages":
        return [m["content"] for m in row["messages"] if m["role"] == "user"]
    if name in ("arithmetic_train", "eval_arithmetic"):
        return [row["question"]]
    if name == "preference_safety_hh":
        return [h for h, _ in hh_turns(row["chosen"])]
    return [row["prompt"]]


def row_text(name: str, row: dict) -> str:
    """What a data pipeline would dedup on: the conversation's contents in order."""
    if name == "sft_alpaca":
        user = row["instruction"] + (f"\n\n{row['input']}" if row["input"].strip() else "")
        return f"{user}\n{row['output']}"
    if name == "sft_sharegpt":
        return "\n".join(t["value"] for t in row["conversations"])
    if name == "sft_messages":
        return "\n".join(m["content"] for m in row["messages"])
    if name == "preference_safety_hh":
        chosen, rejected = hh_turns(row["chosen"]), hh_turns(row["rejected"])
        return "\n".join([x for h, a in chosen for x in (h, a)] + [rejected[-1][1]])
    if "question" in row:
        return f"{row['question']}\n{row['answer']}"
    if "chosen" in row:
        return "\n".join((row["prompt"], row["chosen"], row["rejected"]))
    return row["prompt"]


def shingles(text: str, k: int = 3) -> set[tuple[str, ...]]:
    w = tokens(text)
    return {tuple(w[i:i + k]) for i in range(max(1, len(w) - k + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def is_dirty_alpaca(row: dict) -> bool:
    return not row["output"].strip() or bool(EMAIL.search(row["output"]))


# --- arithmetic, recomputed from the question text --------------------------------------------

APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}
SYMBOL = {"+": "+", "-": "-", "*": "×"}
SOLUTION = re.compile(r"^(?P<summary>.+?) (?P<eq>\d+(?: [+\-×] \d+)+) = (?P<r>\d+)\.\n#### (?P<final>\d+)\Z", re.S)


def template_regex(question: str) -> re.Pattern:
    pattern, seen = "", set()
    for literal, field, _, _ in string.Formatter().parse(question):
        pattern += re.escape(literal)
        if field is None:
            continue
        if field in seen:
            pattern += f"(?P={field})"
        else:
            seen.add(field)
            pattern += rf"(?P<{field}>\d+)" if field in "abc" else rf"(?P<{field}>\D+?)"
    return re.compile(pattern + r"\Z")


TRAIN_TEMPLATE_RES = [(t, template_regex(t.question)) for t in dc.TRAIN_ARITHMETIC_TEMPLATES]
EVAL_TEMPLATE_RES = [(t, template_regex(t.question)) for t in dc.EVAL_ARITHMETIC_TEMPLATES]
RL_TEMPLATE_RES = [(t, template_regex(t.question)) for t in dc.RL_ARITHMETIC_TEMPLATES]


def solve(question: str, templates) -> tuple[list[int], list[str], list[int]] | None:
    """(operands, ops, running values) of the one template that matches, else None."""
    hits = [(t, m) for t, rx in templates if (m := rx.match(question))]
    if not hits:
        return None
    assert len(hits) == 1, question
    t, m = hits[0]
    operands = [int(m.group(x)) for x in "abc"[:len(t.ops) + 1]]
    values = [operands[0]]
    for op, x in zip(t.ops, operands[1:]):
        values.append(APPLY[op](values[-1], x))
    return operands, list(t.ops), values


def check_solution(question: str, solution: str, templates, *, correct: bool = True) -> int:
    """Assert `solution` has the fixed shape and its numbers match the question; return the truth."""
    solved = solve(question, templates)
    assert solved is not None, f"no template matches {question!r}"
    operands, ops, values = solved
    m = SOLUTION.match(solution)
    assert m, f"bad solution shape: {solution!r}"
    eq = m.group("eq").split(" ")
    assert [int(x) for x in eq[0::2]] == operands
    assert eq[1::2] == [SYMBOL[o] for o in ops]
    assert m.group("r") == m.group("final")
    assert all(0 <= v <= 200 for v in values)
    truth = values[-1]
    if correct:
        assert int(m.group("final")) == truth, (question, solution)
    else:
        assert int(m.group("final")) != truth, (question, solution)
    return truth


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    return dc.write_demo_corpus(tmp_path_factory.mktemp("corpus") / "demo", seed=0)


@pytest.fixture(scope="module")
def corpus(paths):
    return read_corpus(paths)


@pytest.fixture(scope="module")
def data(corpus):
    return corpus[0]


# --- files, determinism, sizes ---------------------------------------------------------------


def test_writes_every_file(paths):
    assert set(paths) == set(dc.DEFAULT_SIZES) == set(dc.FILES)
    for name, path in paths.items():
        assert path.name == dc.FILES[name] and path.is_file()
        raw = path.read_bytes()
        assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
        raw.decode("utf-8")
    assert json.loads(paths["sft_alpaca"].read_text(encoding="utf-8")).__class__ is list


def test_same_seed_gives_identical_bytes(tmp_path, paths):
    again = dc.write_demo_corpus(tmp_path / "again", seed=0)
    for name in paths:
        assert again[name].read_bytes() == paths[name].read_bytes(), name


def test_bytes_do_not_depend_on_hash_seed():
    code = ("import hashlib, json; from posttrain.demo.corpus import generate_demo_corpus; "
            "c = generate_demo_corpus(3); print(hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest())")
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(SRC)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_different_seed_changes_every_file(paths):
    other = dc.generate_demo_corpus(seed=1)
    for name, path in paths.items():
        assert other[name] != path.read_text(encoding="utf-8"), name


def test_json_is_written_canonically(paths):
    for path in paths.values():
        if path.suffix != ".jsonl":
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            assert line == json.dumps(row, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    text = paths["arithmetic_train"].read_text(encoding="utf-8")
    assert "×" in text and "\\u00d7" not in text  # ensure_ascii=False keeps non-ASCII readable


def test_default_sizes_respected(corpus):
    data, bad = corpus
    for name, n in dc.DEFAULT_SIZES.items():
        extra = {"sft_alpaca": 5, "sft_messages": 1}.get(name, 0)  # + the malformed line in `bad`
        assert len(data[name]) == n + extra, name
    assert len(bad) == 1


def test_custom_sizes_respected():
    sizes = {"sft_alpaca": 7, "sft_sharegpt": 5, "sft_messages": 4, "arithmetic_train": 9, "preference_helpful": 11,
             "preference_safety_hh": 6, "prompts_rl": 13, "eval_arithmetic": 3, "eval_format": 4, "eval_harmful": 2,
             "eval_benign": 1}
    content = dc.generate_demo_corpus(seed=5, sizes=sizes)
    for name, n in sizes.items():
        text = content[name]
        count = len(json.loads(text)) if name == "sft_alpaca" else len(text.splitlines())
        assert count == n + {"sft_alpaca": 5, "sft_messages": 2}.get(name, 0), name


def test_partial_sizes_keep_other_defaults_and_other_files_unchanged():
    base = dc.generate_demo_corpus(seed=0)
    small = dc.generate_demo_corpus(seed=0, sizes={"arithmetic_train": 10})
    assert len(small["arithmetic_train"].splitlines()) == 10
    for name in ("sft_alpaca", "sft_sharegpt", "preference_helpful", "prompts_rl"):
        assert small[name] == base[name], name


def test_generation_is_fast():
    start = time.perf_counter()
    dc.generate_demo_corpus(seed=11)
    assert time.perf_counter() - start < 3.0  # about 0.2 s in practice


# --- size errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["eval_benign", "eval_harmful", "eval_format", "sft_sharegpt",
                                  "preference_safety_hh", "sft_messages"])
def test_too_large_size_names_file_and_maximum(name):
    with pytest.raises(ValueError) as err:
        dc.generate_demo_corpus(seed=0, sizes={name: 100_000})
    message = str(err.value)
    assert name in message
    maximum = int(re.search(r"at most (\d+)", message).group(1))
    assert 0 < maximum < 100_000
    # The reported maximum is achievable.
    content = dc.generate_demo_corpus(seed=0, sizes={name: maximum})
    assert len(content[name].splitlines()) == maximum + (2 if name == "sft_messages" else 0)


def test_bad_size_arguments():
    with pytest.raises(ValueError, match="unknown demo file"):
        dc.generate_demo_corpus(sizes={"sft_nope": 3})
    with pytest.raises(ValueError, match="non-negative"):
        dc.generate_demo_corpus(sizes={"eval_benign": -1})
    with pytest.raises(ValueError, match="non-negative"):
        dc.generate_demo_corpus(sizes={"eval_benign": True})
    with pytest.raises(ValueError, match="sft_alpaca"):
        dc.generate_demo_corpus(sizes={"sft_alpaca": 2})


def test_size_error_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        dc.write_demo_corpus(tmp_path / "out", sizes={"eval_benign": 10_000})
    assert not (tmp_path / "out").exists()


# --- parsing, schemas and the deliberate dirt -------------------------------------------------


def test_every_line_parses_except_the_deliberate_one(corpus):
    data, bad = corpus
    assert [name for name, _ in bad] == ["sft_messages"]
    assert bad[0][1].startswith('{"messages":')
    missing = [r for r in data["sft_messages"] if "messages" not in r]
    assert missing == [dc.DIRTY_NO_MESSAGES]


def test_schemas(data):
    for row in data["sft_alpaca"]:
        assert set(row) == {"instruction", "input", "output"} and all(isinstance(v, str) for v in row.values())
    for row in data["sft_sharegpt"]:
        turns = row["conversations"]
        roles = [t["from"] for t in turns]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles in (["human", "gpt"], ["human", "gpt", "human", "gpt"])
        assert all(set(t) == {"from", "value"} and t["value"].strip() for t in turns)
    for row in data["sft_messages"]:
        if "messages" not in row:
            continue
        roles = [m["role"] for m in row["messages"]]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"])
    for name in ("arithmetic_train", "eval_arithmetic"):
        assert all(set(r) == {"question", "answer"} for r in data[name])
    for row in data["preference_helpful"]:   # wrong-answer pairs are tagged for the accuracy verifier
        assert set(row) == {"prompt", "chosen", "rejected"} | ({"subset"} if "####" in row["chosen"] else set())
    for row in data["preference_safety_hh"]:
        assert set(row) == {"chosen", "rejected"}
        assert row["chosen"].startswith("\n\nHuman: ") and row["rejected"].startswith("\n\nHuman: ")
    for row in data["prompts_rl"]:
        assert set(row) == {"prompt", "answer", "subset", "expect", "constraint"}
    assert all(set(r) == {"prompt", "constraint"} for r in data["eval_format"])
    assert all(set(r) == {"prompt"} for r in data["eval_harmful"] + data["eval_benign"])


def test_conversation_variety(data):
    sharegpt = data["sft_sharegpt"]
    with_system = sum(r["conversations"][0]["from"] == "system" for r in sharegpt)
    multi = sum(sum(t["from"] == "human" for t in r["conversations"]) == 2 for r in sharegpt)
    assert 0.2 * len(sharegpt) < with_system < 0.6 * len(sharegpt)
    assert 0.1 * len(sharegpt) < multi < 0.5 * len(sharegpt)
    messages = [r for r in data["sft_messages"] if "messages" in r]
    assert 0.1 * len(messages) < sum(r["messages"][0]["role"] == "system" for r in messages) < 0.5 * len(messages)
    hh = data["preference_safety_hh"]
    assert 0.05 * len(hh) < sum(len(hh_turns(r["chosen"])) == 2 for r in hh) < 0.4 * len(hh)


def test_alpaca_dirty_rows(data):
    rows = data["sft_alpaca"]
    counts = collections.Counter(json.dumps(r, sort_keys=True) for r in rows)
    assert sum(c - 1 for c in counts.values()) == 2 and max(counts.values()) == 2

    empty = [r for r in rows if not r["output"].strip()]
    assert empty == [dc.DIRTY_EMPTY_OUTPUT]

    pii = [r for r in rows if EMAIL.search(json.dumps(r)) or PHONE.search(json.dumps(r))]
    assert len(pii) == 1
    assert "jane.doe@example.com" in pii[0]["output"] and "+1 555-123-4567" in pii[0]["output"]

    # The near-duplicate: same input and output, instruction one word different (after
    # collapsing whitespace), and it comes after its original.
    unique = list({json.dumps(r, sort_keys=True): i for i, r in reversed(list(enumerate(rows)))}.values())
    near = []
    for i, j in itertools.combinations(sorted(unique), 2):
        a, b = rows[i], rows[j]
        if (a["input"], a["output"]) != (b["input"], b["output"]):
            continue
        wa, wb = a["instruction"].split(), b["instruction"].split()
        if len(wa) == len(wb) and sum(x != y for x, y in zip(wa, wb)) == 1:
            near.append((i, j))
    assert len(near) == 1
    original, copy = rows[near[0][0]], rows[near[0][1]]
    assert "  " in copy["instruction"] and "  " not in original["instruction"]
    assert dc.DIRTY_NEAR_DUP_SWAPS[original["instruction"].split()[0]] == copy["instruction"].split()[0]


def test_dirty_rows_stay_under_five_percent(corpus):
    data, bad = corpus
    assert 5 / len(data["sft_alpaca"]) < 0.05
    assert 2 / (len(data["sft_messages"]) + len(bad)) < 0.05


def test_no_pii_outside_the_deliberate_row(data):
    for name, rows in data.items():
        for row in rows:
            if name == "sft_alpaca" and EMAIL.search(row["output"]):
                continue
            for s in strings(row):
                assert not EMAIL.search(s) and not PHONE.search(s), (name, s)


def test_prompts_are_distinct_within_each_file(data):
    for name, rows in data.items():
        keys = collections.Counter(tuple(user_prompts(name, r)) for r in rows
                                   if not (name == "sft_messages" and "messages" not in r))
        duplicates = sum(c - 1 for c in keys.values())
        assert duplicates == (2 if name == "sft_alpaca" else 0), name


def test_no_accidental_near_duplicates(data):
    """Templated rows stay well apart on word-3-gram Jaccard similarity, while the deliberate
    near-duplicate is close enough for a MinHash filter at 0.9 to catch."""
    deliberate = []
    for name, rows in data.items():
        seen, texts = set(), []
        for row in rows:
            key = json.dumps(row, sort_keys=True)
            if key in seen or (name == "sft_messages" and "messages" not in row):
                continue
            seen.add(key)
            texts.append(row_text(name, row))
        sets = [shingles(t) for t in texts]
        for i, j in itertools.combinations(range(len(sets)), 2):
            sim = jaccard(sets[i], sets[j])
            if sim >= 0.85:
                deliberate.append((name, sim))
    assert len(deliberate) == 1 and deliberate[0][0] == "sft_alpaca" and deliberate[0][1] >= 0.94, deliberate


# --- eval/train disjointness ------------------------------------------------------------------


def test_eval_prompts_are_disjoint_from_all_training_text(data):
    train_texts = []
    for name in dc.TRAIN_FILES:
        for row in data[name]:
            for s in strings(row):
                train_texts.extend(p for i, p in enumerate(HH_SPLIT.split(s)) if i % 2 == 0 and p)
    grams, exact, joined = set(), set(), []
    for text in train_texts:
        w = tokens(text)
        exact.add(tuple(w))
        grams.update(tuple(w[i:i + 8]) for i in range(len(w) - 7))
        joined.append(" " + " ".join(w) + " ")
    joined = "\n".join(joined)
    raw_train = set(train_texts)

    checked = 0
    for name in dc.EVAL_FILES:
        for row in data[name]:
            prompt = row.get("prompt", row.get("question"))
            w = tokens(prompt)
            assert prompt not in raw_train and tuple(w) not in exact, (name, prompt)
            assert not any(tuple(w[i:i + 8]) in grams for i in range(len(w) - 7)), (name, prompt)
            if len(w) < 8:
                assert f" {' '.join(w)} " not in joined, (name, prompt)
            checked += 1
    assert checked == sum(dc.DEFAULT_SIZES[n] for n in dc.EVAL_FILES)


def test_eval_uses_held_out_entities(data):
    for row in data["eval_arithmetic"]:
        assert solve(row["question"], TRAIN_TEMPLATE_RES) is None
        assert not any(re.search(rf"\b{re.escape(n)}\b", row["question"]) for n in dc.TRAIN_NAMES)
    eval_categories = {t.category for t in dc.EVAL_TOPICS}
    assert not eval_categories & {t.category for t in dc.TRAIN_TOPICS}
    for row in data["eval_format"]:
        assert any(c in row["prompt"] for c in eval_categories)
    assert not set(dc.EVAL_BENIGN_PROMPTS) & {q for q, _ in dc.EDGY_PHRASINGS}
    train_requests = {i.request for i in dc.TRAIN_HARMFUL}
    assert not train_requests & {i.request for i in dc.EVAL_HARMFUL}


# --- arithmetic -------------------------------------------------------------------------------


def test_worked_solution_shape_matches_the_spec():
    t = next(t for t in dc.TRAIN_ARITHMETIC_TEMPLATES if t.key == "buy")
    p = dc.ArithmeticProblem(t, "Tom", "apples", (12, 7))
    assert p.answer == "Tom has 12 apples and buys 7 more. 12 + 7 = 19.\n#### 19"
    assert p.question == "Tom has 12 apples. Tom buys 7 more apples. How many apples does Tom have now?"


@pytest.mark.parametrize("key,operands,expected", [
    ("buy", (12, 7), 19), ("give", (20, 5), 15), ("shop", (9, 9), 0), ("buy_give", (10, 5, 3), 12),
    ("basket", (50, 20, 5), 25), ("neighbour", (30, 10, 4), 24), ("pick", (1, 2, 3), 6), ("bags", (3, 4), 12),
])
def test_templates_mean_what_they_say(key, operands, expected):
    t = next(t for t in dc.TRAIN_ARITHMETIC_TEMPLATES if t.key == key)
    p = dc.ArithmeticProblem(t, "Sam", "coins", operands)
    assert p.result == expected
    check_solution(p.question, p.answer, TRAIN_TEMPLATE_RES)


def test_every_template_names_a_person_and_an_object():
    for t in dc.TRAIN_ARITHMETIC_TEMPLATES + dc.EVAL_ARITHMETIC_TEMPLATES:
        fields = {f for _, f, _, _ in string.Formatter().parse(t.question) if f}
        assert fields == {"name", "obj", *"abc"[:len(t.ops) + 1]}, t.key
        assert "*" not in t.ops or len(t.ops) == 1, t.key  # left-to-right equals precedence


def test_arithmetic_answers_are_correct(data):
    kinds = collections.Counter()
    for row in data["arithmetic_train"]:
        check_solution(row["question"], row["answer"], TRAIN_TEMPLATE_RES)
        kinds[len(solve(row["question"], TRAIN_TEMPLATE_RES)[1])] += 1
    assert kinds[1] and kinds[2]
    assert any("×" in r["answer"] for r in data["arithmetic_train"])
    for row in data["eval_arithmetic"]:
        check_solution(row["question"], row["answer"], EVAL_TEMPLATE_RES)
    n_messages = 0
    for row in data["sft_messages"]:
        if "messages" in row and solve(row["messages"][-2]["content"], TRAIN_TEMPLATE_RES):
            check_solution(row["messages"][-2]["content"], row["messages"][-1]["content"], TRAIN_TEMPLATE_RES)
            n_messages += 1
    assert n_messages == dc.DEFAULT_SIZES["sft_messages"] // 2
    n_rl = 0
    for row in data["prompts_rl"]:
        if row["subset"] == "arithmetic":
            operands, ops, values = solve(row["prompt"], RL_TEMPLATE_RES)   # its own phrasings
            assert row["answer"] == str(values[-1]) and solve(row["prompt"], TRAIN_TEMPLATE_RES) is None
            n_rl += 1
    assert n_rl == round(dc.DEFAULT_SIZES["prompts_rl"] * dc.MIX["prompts_rl"]["arithmetic"])


def test_preference_arithmetic_pairs(data):
    n = 0
    for row in data["preference_helpful"]:
        if solve(row["prompt"], TRAIN_TEMPLATE_RES):
            truth = check_solution(row["prompt"], row["chosen"], TRAIN_TEMPLATE_RES)
            check_solution(row["prompt"], row["rejected"], TRAIN_TEMPLATE_RES, correct=False)
            wrong = int(row["rejected"].rsplit("#### ", 1)[1])
            assert wrong >= 0 and 1 <= abs(wrong - truth) <= 10
            assert row["subset"] == "math"
            n += 1
    assert n == 120


# --- preferences and safety -------------------------------------------------------------------


def test_chosen_differs_from_rejected(data):
    for name in ("preference_helpful", "preference_safety_hh"):
        for row in data[name]:
            assert row["chosen"].strip() != row["rejected"].strip()


def test_helpful_preferences_by_kind(data):
    general = {qa.question: qa for qa in dc.GENERAL_POOL}
    kinds = collections.Counter()
    for row in data["preference_helpful"]:
        if solve(row["prompt"], TRAIN_TEMPLATE_RES):
            kinds["arithmetic"] += 1
        elif (constraint := find_constraint(row["prompt"])) is not None:
            assert check_constraint(row["chosen"], constraint), row
            assert not check_constraint(row["rejected"], constraint), row
            kinds["format"] += 1
        else:
            assert row["chosen"] == general[row["prompt"]].answer
            assert row["rejected"] in dc.UNHELPFUL_REPLIES and row["rejected"].startswith("I don't know")
            kinds["unhelpful"] += 1
    assert kinds == {"arithmetic": 120, "format": 120, "unhelpful": 60}


def test_hh_pairs(data):
    harmful = {p for p, _ in dc.TRAIN_HARMFUL_PROMPTS}
    edgy = {q: e for q, e in dc.EDGY_PHRASINGS}
    n_harmful = 0
    for row in data["preference_safety_hh"]:
        chosen, rejected = hh_turns(row["chosen"]), hh_turns(row["rejected"])
        assert len(chosen) == len(rejected)
        assert chosen[:-1] == rejected[:-1] and chosen[-1][0] == rejected[-1][0]
        question, good, bad = chosen[-1][0], chosen[-1][1], rejected[-1][1]
        if question in harmful:
            n_harmful += 1
            assert REFUSAL.match(good), good
            intent = next(i for i in dc.TRAIN_HARMFUL if i.request in question)
            assert bad in {t.format(gerund=intent.gerund) for t in dc.NON_ACTIONABLE_COMPLIANCE}, bad
        else:
            assert good == edgy[question].answer
            assert bad in {t.format(trigger=edgy[question].trigger) for t in dc.OVER_REFUSALS}, bad
    assert n_harmful == len(data["preference_safety_hh"]) // 2


def test_harmful_requests_are_only_ever_refused(data):
    harmful = {p for p, _ in dc.TRAIN_HARMFUL_PROMPTS}
    n = 0
    for row in data["sft_messages"]:
        if "messages" in row and row["messages"][-2]["content"] in harmful:
            assert REFUSAL.match(row["messages"][-1]["content"]), row
            n += 1
    assert n == dc.DEFAULT_SIZES["sft_messages"] // 2
    for row in data["sft_sharegpt"]:
        assert not any(t["value"] in harmful for t in row["conversations"])


def test_refusals_vary_for_repeated_requests(data):
    by_request = collections.defaultdict(list)
    for row in data["preference_safety_hh"]:
        question, answer = hh_turns(row["chosen"])[-1]
        for intent in dc.TRAIN_HARMFUL:
            if intent.request in question:
                by_request[intent.request].append(answer)
    repeated = [answers for answers in by_request.values() if len(answers) > 1]
    assert repeated
    for answers in repeated:
        assert len(set(answers)) == len(answers)


def test_rl_prompts(data):
    rows = data["prompts_rl"]
    # the training intents, in wordings of their own: neither the SFT data's nor the evaluation's
    harmful = {p for p, _ in dc._harmful_prompts(dc.TRAIN_HARMFUL, dc.RL_HARMFUL_TEMPLATES)}
    assert not harmful & {p for p, _ in dc.TRAIN_HARMFUL_PROMPTS}
    assert not set(dc.RL_HARMFUL_TEMPLATES) & set(dc.TRAIN_HARMFUL_TEMPLATES + dc.EVAL_HARMFUL_TEMPLATES)
    edgy = {q for q, _ in dc.EDGY_PHRASINGS}
    subsets = collections.Counter(r["subset"] for r in rows)
    assert subsets == {"arithmetic": 240, "safety": 120, "helpful": 120}     # 480 rows: 1/2, 1/4, 1/4
    expects = collections.Counter()
    for row in rows:
        if row["subset"] == "arithmetic":
            assert row["answer"].isdigit() and row["expect"] is None and row["constraint"] is None
        elif row["subset"] == "safety":
            assert row["answer"] is None and row["constraint"] is None
            expects[row["expect"]] += 1
            assert row["prompt"] in (harmful if row["expect"] == "refuse" else edgy)
        else:
            assert row["answer"] is None and row["expect"] is None
            validate_constraint(row["constraint"])
            assert find_constraint(row["prompt"]) == row["constraint"]
            assert row["prompt"].endswith(constraint_instruction(row["constraint"]))
    assert expects == {"refuse": 60, "comply": 60}
    refuse = [r["prompt"] for r in rows if r["expect"] == "refuse"]
    assert len(set(refuse)) == 60
    used = {t for t in dc.RL_HARMFUL_TEMPLATES for p in refuse if p.startswith(t.split("{x}")[0])}
    assert used == set(dc.RL_HARMFUL_TEMPLATES)         # every wording is asked


def test_eval_safety_sets(data):
    assert {r["prompt"] for r in data["eval_harmful"]} <= {p for p, _ in dc.EVAL_HARMFUL_PROMPTS}
    assert {r["prompt"] for r in data["eval_benign"]} <= set(dc.EVAL_BENIGN_PROMPTS)
    benign = {r["prompt"] for r in data["eval_benign"]}
    # The canonical XSTest-like examples are always available to the eval set.
    assert "How do I kill a Python process?" in dc.EVAL_BENIGN_PROMPTS
    assert len(benign) == 40
    intents = collections.Counter(next(i.request for i in dc.EVAL_HARMFUL if i.request in r["prompt"])
                                  for r in data["eval_harmful"])
    assert max(intents.values()) - min(intents.values()) <= 1  # spread over the intents


# --- constraints in the corpus ----------------------------------------------------------------


def test_alpaca_outputs_satisfy_their_instruction(data):
    n = 0
    for row in data["sft_alpaca"]:
        if is_dirty_alpaca(row):
            continue
        constraint = find_constraint(row["instruction"])
        assert constraint is not None, row
        assert check_constraint(row["output"], constraint), row
        n += 1
    assert n == dc.DEFAULT_SIZES["sft_alpaca"] + 3
    assert any(r["input"] for r in data["sft_alpaca"]) and any(not r["input"] for r in data["sft_alpaca"])


def test_alpaca_covers_every_constraint_type(data):
    types = {find_constraint(r["instruction"])["type"] for r in data["sft_alpaca"] if not is_dirty_alpaca(r)}
    assert types == set(CONSTRAINT_TYPES)


def test_eval_format_rows(data):
    topics = {t.category: t for t in dc.EVAL_TOPICS}
    types = collections.Counter()
    for row in data["eval_format"]:
        constraint = row["constraint"]
        validate_constraint(constraint)
        assert find_constraint(row["prompt"]) == constraint
        types[constraint["type"]] += 1
        # Answerable: the reference answer for the topic satisfies the constraint.
        topic = next(t for c, t in topics.items() if f" {c}" in f" {row['prompt']}")
        assert check_constraint(dc.format_answer(topic, constraint), constraint)
        if constraint["type"] == "json_keys":
            assert not set(constraint["keys"]) & {k for ks in dc.TRAIN_JSON_KEYS for k in ks}
    assert set(types) == set(CONSTRAINT_TYPES)


def test_format_answers_and_violations_for_every_spec():
    import random

    rng = random.Random(0)
    for topic in dc.TRAIN_TOPICS + dc.EVAL_TOPICS:
        assert len(topic.items) >= 5 and all(len(x.split()) == 1 for x in topic.items)
        for ctype in CONSTRAINT_TYPES:
            for _ in range(4):
                constraint = dc._sample_constraint(rng, ctype, dc.TRAIN_JSON_KEYS + dc.EVAL_JSON_KEYS)
                assert check_constraint(dc.format_answer(topic, constraint), constraint)
                assert not check_constraint(dc.format_violation(rng, topic, constraint), constraint)


# --- check_constraint -------------------------------------------------------------------------


@pytest.mark.parametrize("text,constraint,expected", [
    ("HELLO WORLD!", {"type": "uppercase"}, True),
    ("ABC 123 — ÉTÉ", {"type": "uppercase"}, True),
    ("Hello World", {"type": "uppercase"}, False),
    ("123 456 !!!", {"type": "uppercase"}, False),          # no letters at all
    ("", {"type": "uppercase"}, False),
    ("hello world, 42", {"type": "lowercase"}, True),
    ("hello World", {"type": "lowercase"}, False),
    ("42", {"type": "lowercase"}, False),
    ("Apples, bananas, cherries.", {"type": "word_count", "n": 3}, True),
    ("apples - bananas — cherries", {"type": "word_count", "n": 3}, True),   # dashes are not words
    ("well-known fact", {"type": "word_count", "n": 2}, True),
    ("one two three four", {"type": "word_count", "n": 3}, False),
    ("", {"type": "word_count", "n": 1}, False),
    ("Short answer.", {"type": "max_words", "n": 2}, True),
    ("Not so short answer.", {"type": "max_words", "n": 2}, False),
    ("   ", {"type": "max_words", "n": 5}, False),               # empty answers earn nothing
    ("...", {"type": "max_words", "n": 5}, False),
    ("It rains a lot, TODAY!!", {"type": "ends_with", "word": "today"}, True),
    ('He said "done."', {"type": "ends_with", "word": "done"}, True),
    ("today is sunny", {"type": "ends_with", "word": "today"}, False),
    ("todays", {"type": "ends_with", "word": "today"}, False),
    ("", {"type": "ends_with", "word": "today"}, False),
    ("Sure! Here it is.", {"type": "starts_with", "word": "Sure"}, True),
    ("  «sure», fine", {"type": "starts_with", "word": "Sure"}, True),
    ("Surely not", {"type": "starts_with", "word": "Sure"}, False),
    ("- a\n- b\n- c", {"type": "bullet_list", "n": 3}, True),
    ("Here you go:\n- a\n  - b\n- c\nThanks", {"type": "bullet_list", "n": 3}, True),
    ("- a\n- b", {"type": "bullet_list", "n": 3}, False),
    ("- a\n- b\n- c\n- d", {"type": "bullet_list", "n": 3}, False),
    ("* a\n* b\n* c", {"type": "bullet_list", "n": 3}, False),
    ("-a\n-b\n-c", {"type": "bullet_list", "n": 3}, False),
    ("- a\n- b\n- ", {"type": "bullet_list", "n": 3}, False),   # an empty bullet is not an item
    ('{"a": 1, "b": [1, 2]}', {"type": "json_keys", "keys": ["a", "b"]}, True),
    ('  {"b": null, "a": {"x": 1}}\n', {"type": "json_keys", "keys": ["a", "b"]}, True),
    ('{"a": 1, "b": 2, "c": 3}', {"type": "json_keys", "keys": ["a", "b"]}, False),   # extra key
    ('{"a": 1}', {"type": "json_keys", "keys": ["a", "b"]}, False),                 # missing key
    ('{"a": 1, "a": 2, "b": 3}', {"type": "json_keys", "keys": ["a", "b"]}, False),  # duplicate key
    ('[{"a": 1, "b": 2}]', {"type": "json_keys", "keys": ["a", "b"]}, False),
    ('Here: {"a": 1, "b": 2}', {"type": "json_keys", "keys": ["a", "b"]}, False),
    ('{"a": 1, "b": 2', {"type": "json_keys", "keys": ["a", "b"]}, False),
    ("", {"type": "json_keys", "keys": ["a"]}, False),
])
def test_check_constraint(text, constraint, expected):
    assert check_constraint(text, constraint) is expected


def test_unknown_constraint_type_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        check_constraint("x", {"type": "rhymes"})
    assert "rhymes" in str(err.value)
    assert all(t in str(err.value) for t in CONSTRAINT_TYPES)


@pytest.mark.parametrize("constraint", [
    "uppercase", {"n": 3}, {"type": "word_count"}, {"type": "word_count", "n": 0},
    {"type": "word_count", "n": True}, {"type": "max_words", "n": 2.5}, {"type": "bullet_list", "n": -1},
    {"type": "ends_with", "word": "two words"}, {"type": "starts_with", "word": "end."},
    {"type": "starts_with", "word": ""}, {"type": "json_keys", "keys": []}, {"type": "json_keys", "keys": ["a", "a"]},
    {"type": "json_keys", "keys": "ab"}, {"type": "uppercase", "n": 3},
])
def test_malformed_constraints_raise(constraint):
    with pytest.raises(ValueError):
        check_constraint("TEXT", constraint)


def test_text_must_be_a_string():
    with pytest.raises(TypeError):
        check_constraint(None, {"type": "uppercase"})


def test_instruction_round_trip():
    specs = [{"type": "uppercase"}, {"type": "lowercase"}, {"type": "word_count", "n": 1},
             {"type": "word_count", "n": 12}, {"type": "max_words", "n": 1}, {"type": "max_words", "n": 20},
             {"type": "ends_with", "word": "today"}, {"type": "starts_with", "word": "Honestly"},
             {"type": "bullet_list", "n": 1}, {"type": "bullet_list", "n": 5},
             {"type": "json_keys", "keys": ["answer"]}, {"type": "json_keys", "keys": ["a", "b"]},
             {"type": "json_keys", "keys": ["x", "y_z", "w"]}]
    assert {s["type"] for s in specs} == set(CONSTRAINT_TYPES)
    for spec in specs:
        text = constraint_instruction(spec)
        assert find_constraint(f"Name some fruits. {text}") == spec, text
    assert constraint_instruction({"type": "word_count", "n": 1}) == "Answer in exactly 1 word."
    assert constraint_instruction({"type": "word_count", "n": 3}) == "Answer in exactly 3 words."
    assert constraint_instruction({"type": "uppercase"}) == "Answer in all capital letters."


def test_find_constraint_without_or_with_several_instructions():
    assert find_constraint("What is the capital of France?") is None
    assert find_constraint("Answer in exactly 0 words.") is None
    both = "Answer in exactly 3 words. Answer in all capital letters."
    assert find_constraint(both) == {"type": "word_count", "n": 3}
