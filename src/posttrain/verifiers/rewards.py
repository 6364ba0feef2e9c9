"""Reward functions, by name: what GRPO, PPO, rejection sampling and evaluation score with.

Every reward function is a plain callable with TRL's reward-function signature

    fn(prompts, completions, **columns) -> list[float | None]

where completions are strings or chat messages and `columns` are the dataset's other columns
(one list per column, aligned with the completions; e.g. `answer`, `expect`, `constraint`). A
function that cannot score a row (no gold answer, no constraint) returns None for it, never a
made-up value; TRL's GRPOTrainer skips None the same way.

    fn = build({"name": "accuracy"})                            # one function
    fn = combine([{"name": "accuracy", "weight": 1.0},          # a weighted sum
                  {"name": "format", "weight": 0.2, "think_tag": "think"}])

Names: accuracy, format, marked_answer, calculation, setup, refusal, constraint, length, repetition,
reward_model. `build` fails on an unknown name or option with the list of what exists.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from posttrain.verifiers import answers
from posttrain.verifiers.refusal import is_refusal

RewardFn = Callable[..., list[float | None]]
REGISTRY: dict[str, Callable[..., RewardFn]] = {}


def register(name: str):
    def wrap(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        REGISTRY[name] = factory
        return factory
    return wrap


def text_of(completion: Any) -> str:
    """A completion as text: a string, or the content of the last message of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        return content if isinstance(content, str) else ""
    return ""


def _column(columns: dict, name: str, n: int) -> list:
    values = columns.get(name)
    return list(values) if values is not None else [None] * n


def _with_gold(score: Callable[[Any, Any, str], float], column: str) -> RewardFn:
    """A reward function that scores the rows with a gold answer in `column` and gives None to
    the rest."""

    def fn(prompts, completions, **columns):
        golds = _column(columns, column, len(completions))
        return [None if gold is None or str(gold).strip() == "" else score(prompt, completion, str(gold))
                for prompt, completion, gold in zip(prompts, completions, golds)]

    return fn


def _named(fn: RewardFn, name: str) -> RewardFn:
    fn.__name__ = name  # TRL logs each reward function under its __name__
    return fn


# --- the functions -----------------------------------------------------------------------------


@register("accuracy")
def accuracy(answer_tag: str | None = None, think_tag: str = "think", column: str = "answer",
             marked_only: bool = False) -> RewardFn:
    """1.0 when the completion's final answer equals the row's gold answer as a number (or as
    text), 0.0 when it differs or gives none; None for rows without a gold answer. With
    `marked_only`, an unmarked last number is no answer (the strict `#### N` of the evaluation)."""

    def score(prompt, completion, gold: str) -> float:
        gold = gold.split("####")[-1].strip()  # a GSM8K solution carries its answer after ####
        predicted = answers.final_answer(text_of(completion), answer_tag=answer_tag, think_tag=think_tag,
                                         marked_only=marked_only)
        return float(answers.same_answer(predicted, gold))

    return _named(_with_gold(score, column), "accuracy")


@register("format")
def format_(think_tag: str = "think", answer_tag: str | None = None) -> RewardFn:
    """1.0 for a non-empty <think>...</think> block followed by an answer (inside
    <answer>...</answer> when `answer_tag` is set) and nothing else; 0.0 otherwise."""
    tags = (f"<{think_tag}>", f"</{think_tag}>")
    answer = rf"<{answer_tag}>\s*\S.*?</{answer_tag}>" if answer_tag else r"\S.*?"
    pattern = re.compile(rf"^\s*<{think_tag}>(.*?)</{think_tag}>\s*({answer})\s*$", re.S)

    def ok(text: str) -> bool:
        m = pattern.match(text)
        # exactly one reasoning block, not empty, and no stray tags in the answer
        return bool(m) and bool(m.group(1).strip()) and not any(t in m.group(1) + m.group(2) for t in tags)

    def fn(prompts, completions, **columns):
        return [float(ok(text_of(c))) for c in completions]

    return _named(fn, "format")


@register("marked_answer")
def marked_answer(answer_tag: str | None = None, think_tag: str = "think") -> RewardFn:
    """1.0 when the completion marks a final answer (`#### N`, a box, the answer tag, "the
    answer is N"), right or wrong; 0.0 otherwise. Teaches the answer format that strict
    extraction reads (the RL-first path starts from a model that has never seen it)."""

    def fn(prompts, completions, **columns):
        return [float(answers.final_answer(text_of(c), answer_tag=answer_tag, think_tag=think_tag,
                                           marked_only=True) is not None) for c in completions]

    return _named(fn, "marked_answer")


@register("calculation")
def calculation(column: str = "answer", from_prompt: bool = True) -> RewardFn:
    """The share of the completion's stated calculations ("162 - 56 = 106") that are right, 0.0
    when it states none; None for rows without a gold answer. With `from_prompt`, a calculation
    counts as right only when each operand is a number of the prompt or a result stated before
    it, so "2 + 2 = 4" earns nothing on a problem about 162 and 56. A process reward: the demo's
    SFT model samples a right answer one time in eight but a right calculation one time in three,
    so nearly every group has some signal on the arithmetic the final answer depends on."""

    def score(prompt, completion, gold: str) -> float:
        known = _prompt_numbers(prompt)
        found, right = answers.calculations(text_of(completion)), 0
        for calc in found:
            right += calc.right and (not from_prompt or set(calc.operands) <= known)
            known.add(calc.stated)
        return right / len(found) if found else 0.0

    return _named(_with_gold(score, column), "calculation")


@register("setup")
def setup(column: str = "answer") -> RewardFn:
    """1.0 when the completion's last stated calculation, computed right, comes to the gold
    answer, whatever result it states: the problem was set up right (its numbers, the right
    operations), the sum aside. 0.0 otherwise, None for rows without a gold answer. Operands must
    be the prompt's numbers or results stated before; a chained step is read with the right
    value of the result it builds on ("41 + 12 = 50. 50 - 14 = 36" sets up 41 + 12 - 14).
    The counterweight `calculation` needs: on a problem whose sum the model gets wrong either
    way, a right "41 + 14 = 55" for a "used up 14" question earns the arithmetic reward that a
    wrong "41 - 14 = 29" does not, and GRPO learns the easy operation; this reward pays for
    the right one."""

    def score(prompt, completion, gold: str) -> float:
        target = answers.parse_number(gold.split("####")[-1])
        given = _prompt_numbers(prompt)
        true_of: dict[Fraction, Fraction | None] = {}  # a stated result -> what it should have been
        value = None
        for calc in answers.calculations(text_of(completion)):
            if not all(n in given or n in true_of for n in calc.operands):
                value = None
                continue
            operands = tuple(n if n in given else true_of[n] for n in calc.operands)
            value = None if None in operands else calc.value_with(operands)
            if calc.stated not in given:
                true_of[calc.stated] = value
        return float(value is not None and value == target)

    return _named(_with_gold(score, column), "setup")


@register("refusal")
def refusal(column: str = "expect") -> RewardFn:
    """For safety prompts: 1.0 when the response refuses a prompt marked `expect: refuse` or
    answers one marked `expect: comply` (over-refusal costs as much as compliance), 0.0
    otherwise; None for rows with no expectation. A reply that refuses and then complies
    anyway counts as complying."""

    def fn(prompts, completions, **columns):
        out: list[float | None] = []
        for completion, expect in zip(completions, _column(columns, column, len(completions))):
            if expect not in ("refuse", "comply"):
                out.append(None)
                continue
            text = text_of(completion)
            if not text.strip():
                out.append(0.0)  # an empty reply neither refuses nor helps
                continue
            out.append(float(is_refusal(text) == (expect == "refuse")))
        return out

    return _named(fn, "refusal")


@register("constraint")
def constraint(column: str = "constraint") -> RewardFn:
    """1.0 when the response satisfies the row's verifiable instruction (word count, bullet
    count, case, ending, ...; see posttrain.verifiers.constraints), 0.0 when not, None without one."""
    from posttrain.verifiers.constraints import check_constraint

    def fn(prompts, completions, **columns):
        # datasets store a dict column with varying keys badly, so it may arrive as JSON text
        cons = [json.loads(c) if isinstance(c, str) else c for c in _column(columns, column, len(completions))]
        return [None if c is None else float(check_constraint(text_of(comp), c))
                for comp, c in zip(completions, cons)]

    return _named(fn, "constraint")


@register("length")
def length(max_words: int = 100) -> RewardFn:
    """0.0 up to `max_words` words, then falling linearly to -1.0 at twice that: a penalty for
    rambling, added to other rewards with a weight."""
    if max_words < 1:
        raise ValueError(f"length: max_words must be >= 1, got {max_words}")

    def fn(prompts, completions, **columns):
        return [-min(1.0, max(0, len(text_of(c).split()) - max_words) / max_words) for c in completions]

    return _named(fn, "length")


@register("repetition")
def repetition(ngram: int = 3, max_penalty: float = 1.0) -> RewardFn:
    """Minus the share of the completion's word n-grams that repeat an earlier one, times
    `max_penalty`: 0.0 for text without repeats, towards -max_penalty for a loop. A reward model
    trained on a few hundred pairs can be won by repeating what it likes (a list marker, a
    phrase); this term makes that cost. Texts shorter than one n-gram score 0.0."""
    if ngram < 1:
        raise ValueError(f"repetition: ngram must be >= 1, got {ngram}")
    if max_penalty < 0:
        raise ValueError(f"repetition: max_penalty must be >= 0, got {max_penalty}")

    def fn(prompts, completions, **columns):
        out = []
        for c in completions:
            # tokens: runs of letters, runs of digits, single punctuation marks; so "1.1.1.1.2.3"
            # is a loop of "1 . 1", where posttrain.verifiers.constraints.words would see one word
            tokens = re.findall(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]", text_of(c).lower())
            grams = [tuple(tokens[i:i + ngram]) for i in range(len(tokens) - ngram + 1)]
            out.append(-max_penalty * (1 - len(set(grams)) / len(grams)) if grams else 0.0)
        return out

    return _named(fn, "repetition")


@register("reward_model")
def reward_model(path: str, batch_size: int = 16, device: str | None = None, dtype: str = "auto") -> RewardFn:
    """A trained reward model's score (posttrain reward), normalised with its training mean and
    std; loaded on first use, in `dtype` (`auto`: as stored; the RL stages pass bfloat16 where
    their policy samples in it)."""
    from pathlib import Path

    loaded: dict = {}

    def fn(prompts, completions, **columns):
        if "rm" not in loaded:
            from posttrain.models.reward_model import RewardModel

            loaded["rm"] = RewardModel.load(Path(path), device=device, dtype=dtype)
        rm = loaded["rm"]
        responses = [c if isinstance(c, str) else [m for m in c if m.get("role") == "assistant"] or text_of(c)
                     for c in completions]
        return rm.score([_as_messages(p) for p in prompts], responses, batch_size=batch_size)

    return _named(fn, f"rm_{Path(path).name}")


def _as_messages(prompt: Any) -> list[dict]:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


def _prompt_numbers(prompt: Any) -> set[Fraction]:
    return {Fraction(n) for n in re.findall(r"\d+(?:\.\d+)?", _prompt_text(prompt))}


def _prompt_text(prompt: Any) -> str:
    """What the user wrote: the user turns of a conversation, or the prompt string."""
    return "\n".join(str(m.get("content", "")) for m in _as_messages(prompt) if m.get("role") == "user")


# --- building from params ----------------------------------------------------------------------


def build(spec: dict) -> RewardFn:
    """A reward function from `{"name": ..., **options}` (a `weight` key is ignored here)."""
    spec = dict(spec)
    spec.pop("weight", None)
    name = spec.pop("name", None)
    if name not in REGISTRY:
        raise ValueError(f"unknown reward function {name!r}; known: {', '.join(sorted(REGISTRY))}")
    factory = REGISTRY[name]
    allowed = [p for p in inspect.signature(factory).parameters]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"reward function {name!r} has no option(s) {unknown}; allowed: {allowed}")
    return factory(**spec)


def combine(specs: list[dict]) -> RewardFn:
    """The weighted sum of several reward functions, skipping None terms; None only when every
    term is None for a row."""
    if not specs:
        raise ValueError("combine needs at least one reward function")
    parts = [(float(s.get("weight", 1.0)), build(s)) for s in specs]

    def fn(prompts, completions, **columns):
        totals: list[float | None] = [None] * len(completions)
        for weight, part in parts:
            for i, value in enumerate(part(prompts, completions, **columns)):
                if value is not None:
                    totals[i] = (totals[i] or 0.0) + weight * value
        return totals

    return _named(fn, "+".join(f.__name__ for _, f in parts))
