"""Arithmetic word problems for the demo corpus: templates, operand sampling and worked answers.

Every problem has a result in 0..MAX_RESULT, and so does every intermediate value. The templates,
names and objects are tables in tables/arithmetic.json; the training, held-out (eval) and RL sets
each get an ArithmeticSpace.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from posttrain.demo.loader import table
from posttrain.demo.sampling import _draw_distinct

OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
OP_SYMBOL = {"+": "+", "-": "-", "*": "×"}
MAX_RESULT = 200


@dataclass(frozen=True)
class ArithmeticTemplate:
    key: str
    ops: tuple[str, ...]   # applied left to right to the operands {a}, {b}, {c}
    question: str          # placeholders {name} {obj} {a} {b} {c}; every template names a person
    summary: str           # the restatement that opens the worked solution


@dataclass(frozen=True)
class ArithmeticProblem:
    template: ArithmeticTemplate
    name: str
    obj: str
    operands: tuple[int, ...]

    def _fields(self) -> dict:
        return {"name": self.name, "obj": self.obj, **dict(zip("abc", self.operands))}

    @property
    def result(self) -> int:
        value = self.operands[0]
        for op, x in zip(self.template.ops, self.operands[1:]):
            value = OPS[op](value, x)
        return value

    @property
    def question(self) -> str:
        return self.template.question.format(**self._fields())

    @property
    def equation(self) -> str:
        parts = [str(self.operands[0])]
        for op, x in zip(self.template.ops, self.operands[1:]):
            parts += [OP_SYMBOL[op], str(x)]
        return " ".join(parts)

    def solution(self, result: int | None = None) -> str:
        """The worked answer; `result` overrides the final number (for wrong answers)."""
        r = self.result if result is None else result
        return f"{self.template.summary.format(**self._fields())} {self.equation} = {r}.\n#### {r}"

    @property
    def answer(self) -> str:
        return self.solution()


def _t(key: str, ops: str, question: str, summary: str) -> ArithmeticTemplate:
    return ArithmeticTemplate(key, tuple(ops), question, summary)


_ARITHMETIC = table("arithmetic")


def _templates(rows: Sequence[dict]) -> tuple[ArithmeticTemplate, ...]:
    for r in rows:
        if not r["ops"] or set(r["ops"]) - set(OPS):
            raise ValueError(f"tables/arithmetic.json: template {r['key']!r} has ops {r['ops']!r}; use + - *")
    return tuple(_t(r["key"], r["ops"], r["question"], r["summary"]) for r in rows)


TRAIN_ARITHMETIC_TEMPLATES: tuple[ArithmeticTemplate, ...] = _templates(_ARITHMETIC["templates"]["train"])
# Held out: phrasings ("What is the total number of ...", "What number of ... remain") that no
# training template uses.
EVAL_ARITHMETIC_TEMPLATES: tuple[ArithmeticTemplate, ...] = _templates(_ARITHMETIC["templates"]["eval"])
# RL prompts: the same kinds of problems in a third set of phrasings (neither SFT's nor the
# eval's), as RL prompt sets are broader than SFT data; the reasoning stage learns to keep its
# answers right when the wording moves away from what SFT taught.
RL_ARITHMETIC_TEMPLATES: tuple[ArithmeticTemplate, ...] = _templates(_ARITHMETIC["templates"]["rl"])

TRAIN_NAMES: tuple[str, ...] = _ARITHMETIC["names"]["train"]
EVAL_NAMES: tuple[str, ...] = _ARITHMETIC["names"]["eval"]
TRAIN_OBJECTS: tuple[str, ...] = _ARITHMETIC["objects"]["train"]
EVAL_OBJECTS: tuple[str, ...] = _ARITHMETIC["objects"]["eval"]

# Share of two-operand (+/-), three-operand and multiplication problems.
ARITHMETIC_KIND_WEIGHTS = {"two": 0.55, "three": 0.35, "times": 0.10}


def _first_range(ops: tuple[str, ...]) -> tuple[int, int]:
    return {"+": (2, 99), "-": (10, MAX_RESULT), "*": (2, 12)}[ops[0]]


def _operand_range(op: str, value: int) -> tuple[int, int]:
    """Allowed values of the operand that follows `op` when the running value is `value`, so
    that every intermediate and final value stays in 0..MAX_RESULT."""
    if op == "+":
        return 2, min(99, MAX_RESULT - value)
    if op == "-":
        return 1, value
    return 2, 12  # "*"


def _count_operands(ops: tuple[str, ...]) -> int:
    """How many operand tuples a template accepts (for the capacity check)."""
    @functools.cache
    def count(value: int, rest: tuple[str, ...]) -> int:
        if not rest:
            return 1
        lo, hi = _operand_range(rest[0], value)
        total = 0
        for x in range(lo, hi + 1):
            nxt = OPS[rest[0]](value, x)
            if 0 <= nxt <= MAX_RESULT:
                total += count(nxt, rest[1:])
        return total
    lo, hi = _first_range(ops)
    return sum(count(a, ops) for a in range(lo, hi + 1))


def _sample_operands(rng: random.Random, ops: tuple[str, ...]) -> tuple[int, ...]:
    while True:
        values = [rng.randint(*_first_range(ops))]
        current = values[0]
        for op in ops:
            lo, hi = _operand_range(op, current)
            if lo > hi:
                break
            x = rng.randint(lo, hi)
            current = OPS[op](current, x)
            values.append(x)
            if not 0 <= current <= MAX_RESULT:
                break
        else:
            return tuple(values)


def _template_kind(t: ArithmeticTemplate) -> str:
    if "*" in t.ops:
        return "times"
    return "two" if len(t.ops) == 1 else "three"


class ArithmeticSpace:
    """Word problems from one set of templates, names and objects (training or held-out)."""

    def __init__(self, templates: Sequence[ArithmeticTemplate], names: Sequence[str], objects: Sequence[str]):
        self.templates, self.names, self.objects = tuple(templates), tuple(names), tuple(objects)
        self.by_kind = {k: [t for t in self.templates if _template_kind(t) == k] for k in ARITHMETIC_KIND_WEIGHTS}
        # Distinct problems are counted without the name: two rows of a file never differ only in
        # the person's name (they would be near-duplicates).
        self.capacity = sum(len(self.objects) * _count_operands(t.ops) for t in self.templates)

    def draw(self, rng: random.Random) -> ArithmeticProblem:
        kinds = [k for k in ARITHMETIC_KIND_WEIGHTS if self.by_kind[k]]
        kind = rng.choices(kinds, weights=[ARITHMETIC_KIND_WEIGHTS[k] for k in kinds])[0]
        template = rng.choice(self.by_kind[kind])
        return ArithmeticProblem(template, rng.choice(self.names), rng.choice(self.objects),
                                 _sample_operands(rng, template.ops))


TRAIN_ARITHMETIC = ArithmeticSpace(TRAIN_ARITHMETIC_TEMPLATES, TRAIN_NAMES, TRAIN_OBJECTS)
EVAL_ARITHMETIC = ArithmeticSpace(EVAL_ARITHMETIC_TEMPLATES, EVAL_NAMES, EVAL_OBJECTS)
RL_ARITHMETIC = ArithmeticSpace(RL_ARITHMETIC_TEMPLATES, TRAIN_NAMES, TRAIN_OBJECTS)


def wrong_result(rng: random.Random, result: int) -> int:
    """A plausible wrong final answer: off by 1..10, never negative."""
    while True:
        wrong = result + rng.choice((-1, 1)) * rng.randint(1, 10)
        if wrong >= 0 and wrong != result:
            return wrong



def _arithmetic_problems(rng: random.Random, n: int, space: ArithmeticSpace = TRAIN_ARITHMETIC,
                         accept: Callable[[object], bool] | None = None) -> list[ArithmeticProblem]:
    def draw(r: random.Random):
        p = space.draw(r)
        return (p.template.key, p.obj, p.operands), p
    return _draw_distinct(rng, n, draw, space.capacity, accept)
