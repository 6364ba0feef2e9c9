"""The demo corpus's eval files and the disjointness guard: eval prompts come from held-out
templates, names, objects, topics, phrasings and intents, and any candidate that overlaps a
training text (TrainingText.overlaps) is skipped."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from posttrain.demo.arithmetic import EVAL_ARITHMETIC, _arithmetic_problems
from posttrain.demo.instructions import (
    EVAL_ASKS,
    EVAL_JSON_KEYS,
    EVAL_TOPICS,
    _sample_constraint,
    format_answer,
    format_prompt,
)
from posttrain.demo.safety import EVAL_BENIGN_PROMPTS, EVAL_HARMFUL_PROMPTS
from posttrain.demo.sampling import _sample, _spread
from posttrain.verifiers.constraints import CONSTRAINT_TYPES

SHINGLE = 8  # eval/train disjointness: no shared run of this many words

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens, the unit of the eval/train disjointness check."""
    return _WORD.findall(text.lower())


class TrainingText:
    """Every training string, for rejecting eval candidates that overlap with it."""

    def __init__(self, texts: Sequence[str]):
        self.grams: set[tuple[str, ...]] = set()
        joined = []
        for text in texts:
            w = words(text)
            self.grams.update(tuple(w[i:i + SHINGLE]) for i in range(len(w) - SHINGLE + 1))
            joined.append(" " + " ".join(w) + " ")
        self._joined = "\n".join(joined)

    def overlaps(self, text: str) -> bool:
        w = words(text)
        if len(w) < SHINGLE:
            # Too short to share an 8-word run: it must not appear inside any training text at all.
            return f" {' '.join(w)} " in self._joined
        return any(tuple(w[i:i + SHINGLE]) in self.grams for i in range(len(w) - SHINGLE + 1))


def _eval_arithmetic_rows(rng: random.Random, n: int, train: TrainingText) -> list[dict]:
    problems = _arithmetic_problems(rng, n, EVAL_ARITHMETIC, accept=lambda p: not train.overlaps(p.question))
    return [{"question": p.question, "answer": p.answer} for p in problems]


def _eval_format_rows(rng: random.Random, n: int, train: TrainingText) -> list[dict]:
    pool = []
    for topic in EVAL_TOPICS:
        for ctype in CONSTRAINT_TYPES:
            constraint = _sample_constraint(rng, ctype, EVAL_JSON_KEYS)
            prompt = format_prompt(rng.choice(EVAL_ASKS), topic, constraint)
            format_answer(topic, constraint)  # asserts the prompt is answerable
            if not train.overlaps(prompt):
                pool.append(({"prompt": prompt, "constraint": constraint}, ctype))
    # Spread over the constraint types, so every type is measured on a similar number of prompts.
    rows = [row for row, _, _ in _spread(rng, pool, n)]
    rng.shuffle(rows)
    return rows


def _eval_harmful_rows(rng: random.Random, n: int, train: TrainingText) -> list[dict]:
    pool = [(p, intent) for p, intent in EVAL_HARMFUL_PROMPTS if not train.overlaps(p)]
    rows = [{"prompt": p} for p, _, _ in _spread(rng, pool, n)]
    rng.shuffle(rows)
    return rows


def _eval_benign_rows(rng: random.Random, n: int, train: TrainingText) -> list[dict]:
    pool = [{"prompt": p} for p in EVAL_BENIGN_PROMPTS if not train.overlaps(p)]
    return _sample(rng, pool, n)
