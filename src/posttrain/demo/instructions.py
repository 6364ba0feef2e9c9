"""Instruction-following tasks for the demo corpus: topic questions with a format constraint
(constraints.py wording), their correct and constraint-breaking answers, and the texts of the
sft_alpaca transformation tasks. The tables are in tables/topics.json and
tables/transformations.json."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from posttrain.demo.loader import table
from posttrain.verifiers.constraints import check_constraint, constraint_instruction

# --- format topics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    category: str
    items: tuple[str, ...]   # single words, so "exactly n words" answers are easy to build
    sentence: str            # one true sentence about the category, ending with "."



_TOPICS = table("topics")


def _topics(rows: Sequence[dict]) -> tuple[Topic, ...]:
    for r in rows:
        if any(len(item.split()) != 1 for item in r["items"]):
            raise ValueError(f"tables/topics.json: the items of {r['category']!r} must be single words")
    return tuple(Topic(r["category"], r["items"], r["sentence"]) for r in rows)


TRAIN_TOPICS: tuple[Topic, ...] = _topics(_TOPICS["topics"]["train"])
EVAL_TOPICS: tuple[Topic, ...] = _topics(_TOPICS["topics"]["eval"])

TRAIN_ASKS: tuple[str, ...] = _TOPICS["asks"]["train"]
EVAL_ASKS: tuple[str, ...] = _TOPICS["asks"]["eval"]

# Constraint arguments. JSON key sets for eval use key names no training prompt uses.
_ARGUMENTS = _TOPICS["constraint_arguments"]
WORD_COUNTS: tuple[int, ...] = _ARGUMENTS["word_count"]
MAX_WORDS: tuple[int, ...] = _ARGUMENTS["max_words"]
BULLET_COUNTS: tuple[int, ...] = _ARGUMENTS["bullet_list"]
END_WORDS: tuple[str, ...] = _ARGUMENTS["ends_with"]
START_WORDS: tuple[str, ...] = _ARGUMENTS["starts_with"]
TRAIN_JSON_KEYS: tuple[tuple[str, ...], ...] = _ARGUMENTS["json_keys"]["train"]
EVAL_JSON_KEYS: tuple[tuple[str, ...], ...] = _ARGUMENTS["json_keys"]["eval"]

# max_words answers that are too long on purpose (preference "rejected").
_PADDING: str = _TOPICS["max_words_padding"]


def _sample_constraint(rng: random.Random, ctype: str, json_keys: Sequence[tuple[str, ...]]) -> dict:
    if ctype in ("uppercase", "lowercase"):
        return {"type": ctype}
    if ctype == "word_count":
        return {"type": ctype, "n": rng.choice(WORD_COUNTS)}
    if ctype == "max_words":
        return {"type": ctype, "n": rng.choice(MAX_WORDS)}
    if ctype == "ends_with":
        return {"type": ctype, "word": rng.choice(END_WORDS)}
    if ctype == "starts_with":
        return {"type": ctype, "word": rng.choice(START_WORDS)}
    if ctype == "bullet_list":
        return {"type": ctype, "n": rng.choice(BULLET_COUNTS)}
    if ctype == "json_keys":
        return {"type": ctype, "keys": list(rng.choice(json_keys))}
    raise ValueError(f"unknown constraint type {ctype!r}")


def _cap(word: str) -> str:
    return word[:1].upper() + word[1:]


def _json_value(key: str, topic: Topic, position: int):
    """A value for a JSON key, chosen by what the key name means."""
    if key in ("topic", "category", "subject", "group"):
        return topic.category
    if key in ("examples", "items", "list", "members"):
        return list(topic.items[:3])
    if key in ("answer", "summary"):
        return topic.sentence
    if key in ("total", "size"):
        return 3
    # first/second, favorite, best/runner_up: the next item in order
    return topic.items[position]


def _json_answer(keys: Sequence[str], topic: Topic) -> dict:
    obj, position = {}, 0
    for key in keys:
        obj[key] = _json_value(key, topic, position)
        if key in ("first", "second", "favorite", "best", "runner_up"):
            position += 1
    return obj


def _dumps_answer(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def format_answer(topic: Topic, constraint: dict) -> str:
    """A correct answer to "<ask about topic> <constraint instruction>" that satisfies it."""
    ctype, items, sentence = constraint["type"], topic.items, topic.sentence
    if ctype == "uppercase":
        out = sentence.upper()
    elif ctype == "lowercase":
        out = sentence.lower()
    elif ctype == "word_count":
        out = _cap(", ".join(items[:constraint["n"]])) + "."
    elif ctype == "max_words":
        n = constraint["n"]
        out = sentence if len(sentence.split()) <= n else _cap(", ".join(items[:n])) + "."
    elif ctype == "ends_with":
        out = f"{sentence[:-1]}, {constraint['word']}."
    elif ctype == "starts_with":
        out = f"{constraint['word']}! {sentence}"
    elif ctype == "bullet_list":
        out = "\n".join(f"- {_cap(x)}" for x in items[:constraint["n"]])
    else:
        out = _dumps_answer(_json_answer(constraint["keys"], topic))
    assert check_constraint(out, constraint), (topic.category, constraint, out)
    return out


def format_violation(rng: random.Random, topic: Topic, constraint: dict) -> str:
    """A plausible answer that breaks `constraint` (for preference "rejected")."""
    ctype, items, sentence = constraint["type"], topic.items, topic.sentence
    if ctype in ("uppercase", "lowercase", "ends_with", "starts_with"):
        out = sentence
    elif ctype == "word_count":
        n = constraint["n"]
        out = rng.choice([sentence, _cap(", ".join(items[:n + 1 if n < len(items) else n - 1])) + "."])
    elif ctype == "max_words":
        out = f"{sentence} {_PADDING}"
    elif ctype == "bullet_list":
        n = constraint["n"]
        other = n + 1 if n < len(items) else n - 1
        out = rng.choice([_cap(", ".join(items[:n])) + ".", "\n".join(f"- {_cap(x)}" for x in items[:other])])
    else:
        good = _json_answer(constraint["keys"], topic)
        out = rng.choice([sentence, _dumps_answer({**good, "comment": "Here you go."})])
    assert not check_constraint(out, constraint), (topic.category, constraint, out)
    return out


def format_prompt(ask: str, topic: Topic, constraint: dict) -> str:
    return f"{ask.format(cat=topic.category)} {constraint_instruction(constraint)}"


# --- texts for the transformation tasks ------------------------------------------------------

_TRANSFORMATIONS = table("transformations")
PASSAGE_SENTENCES: tuple[str, ...] = _TRANSFORMATIONS["passage_sentences"]
CASE_VERBS: tuple[str, ...] = _TRANSFORMATIONS["case_verbs"]
LONG_PASSAGE = 10  # sentences
BULLET_TASK: str = _TRANSFORMATIONS["bullet_task"]
JSON_TASK: str = _TRANSFORMATIONS["json_task"]
EXTRACT_KEYS: tuple[tuple[str, ...], ...] = _TRANSFORMATIONS["extract_keys"]
AGES = range(18, 81)
CITIES: tuple[str, ...] = _TRANSFORMATIONS["cities"]
