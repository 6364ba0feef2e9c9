"""Final answers of verifiable problems: where a completion states its answer, and whether two
answers are the same number.

    final_answer("<think>6 x 7 = 42?</think> The answer is \\boxed{42}.")   # "42"
    same_answer("$1,000.00", "1000")                                        # True
    same_answer("3/4", "0.75")                                              # True

Reasoning is never the answer: text inside <think>...</think> is ignored, and a completion whose
reasoning never closes has no answer. Where the answer is marked, the mark wins, in this order:
a configured answer tag (`<answer>42</answer>`), `\\boxed{42}`, GSM8K's `#### 42`, a closing
"the answer is 42" / "Answer: 42"; otherwise the last number in the text. Several different
`#### N` lines are a hedge, not an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_NUMBER = r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_GSM8K = re.compile(r"####\s*(" + _NUMBER + ")")
_ANSWER_IS = re.compile(r"(?:answer is|answer:|answer =|result is|total is)\s*:?\s*(" + _NUMBER + ")", re.I)
_FRAC = re.compile(r"^\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")


def strip_reasoning(text: str, think_tag: str = "think") -> str | None:
    """`text` without its <think> blocks; None when a block opens and never closes (the model ran
    out of tokens mid-thought, so it gave no answer)."""
    open_, close = f"<{think_tag}>", f"</{think_tag}>"
    out, rest = [], text
    while open_ in rest:
        before, _, after = rest.partition(open_)
        out.append(before)
        if close not in after:
            return None
        rest = after.partition(close)[2]
    out.append(rest)
    return "".join(out)


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
    return None


def final_answer(text: str, answer_tag: str | None = None, think_tag: str = "think",
                 marked_only: bool = False) -> str | None:
    """The answer `text` commits to, or None when it gives none. With `marked_only`, only a
    marked answer counts (tag, box, `####`, "the answer is"), never a last number in passing."""
    if not isinstance(text, str):
        return None
    visible = strip_reasoning(text, think_tag)
    if visible is None or not visible.strip():
        return None
    if answer_tag:
        tagged = re.findall(rf"<{answer_tag}>(.*?)</{answer_tag}>", visible, re.S)
        return tagged[-1].strip() if tagged else None
    boxed = _boxed(visible)
    if boxed is not None:
        return boxed
    for pattern in (_GSM8K, _ANSWER_IS):
        found = pattern.findall(visible)
        if pattern is _GSM8K and len({parse_number(f) for f in found}) > 1:
            return None  # several different `#### N`: hedging, no answer
        if found:
            return found[0 if pattern is _GSM8K else -1].strip()
    if marked_only:
        return None
    numbers = _NUMBER_RE.findall(visible)
    return numbers[-1].strip() if numbers else None


def parse_number(text: str | None) -> Fraction | None:
    """A number written as people and models write them: `1,000`, `$5`, `5.0`, `-3`, `3/4`,
    `\\frac{3}{4}`, `42.` or `12 apples`; None when `text` is not one number."""
    if text is None:
        return None
    t = str(text).strip().replace("\u2212", "-")
    frac = _FRAC.match(t)
    if frac:
        t = f"{frac.group(1)}/{frac.group(2)}"
    t = re.sub(r"^\\text\{(.*)\}$", r"\1", t)
    t = t.rstrip(".").replace("$", "").replace("\\%", "").rstrip("%").strip()
    m = re.match(r"^(-?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?(?:\s+[a-zA-Z]+)?$", t)
    if not m:
        return None
    try:
        value = Fraction(m.group(1).replace(",", "").replace(" ", ""))
        if m.group(2):
            denominator = Fraction(m.group(2))
            if denominator == 0:
                return None
            value /= denominator
        return value
    except (ValueError, ZeroDivisionError):
        return None


def same_answer(predicted: str | None, gold: str | int | float | None) -> bool:
    """Equal as numbers when both parse (exactly: 0.75 == 3/4), else as trimmed lower-case text."""
    if predicted is None or gold is None:
        return False
    a, b = parse_number(predicted), parse_number(str(gold))
    if a is not None and b is not None:
        return a == b
    norm = lambda s: re.sub(r"\s+", " ", str(s)).strip().strip(".").lower()  # noqa: E731
    return norm(predicted) == norm(gold) != ""


# A stated calculation: two or more numbers joined by + - x × * / ÷, then "=" and a number.
_OPERAND = r"\d+(?:\.\d+)?"
_CALCULATION = re.compile(rf"(?<![\d.])({_OPERAND}(?:\s*[-+x×*/÷]\s*{_OPERAND})+)\s*=\s*(-?{_OPERAND})(?![\d])")
_CALC_TERM = re.compile(rf"([-+x×*/÷]?)\s*({_OPERAND})")


@dataclass(frozen=True)
class Calculation:
    operands: tuple[Fraction, ...]
    ops: tuple[str, ...]       # the operator before each operand ("" before the first)
    stated: Fraction           # what the text says it comes to

    @property
    def value(self) -> Fraction | None:
        """What the left side comes to (usual precedence); None: division by 0."""
        return self.value_with(self.operands)

    @property
    def right(self) -> bool:
        return self.value == self.stated

    def value_with(self, operands: tuple[Fraction, ...]) -> Fraction | None:
        """What the left side comes to with other operands in the same places (a chained step
        read with the right value of the result it builds on)."""
        return _evaluate(list(zip(self.ops, operands)))


def calculations(text: str) -> list[Calculation]:
    """The calculations `text` states ("162 - 56 = 106", "4 x 12 = 48", "3 + 4 × 2 = 11"), in
    order, reasoning included: a worked solution's arithmetic is checked where it is written."""
    found = []
    for lhs, rhs in _CALCULATION.findall(text if isinstance(text, str) else ""):
        terms = [(op, Fraction(number)) for op, number in _CALC_TERM.findall(lhs)]
        found.append(Calculation(tuple(n for _, n in terms), tuple(op for op, _ in terms), Fraction(rhs)))
    return found


def _evaluate(terms: list[tuple[str, Fraction]]) -> Fraction | None:
    """Products and quotients first, then sums, as arithmetic is read."""
    sums: list[Fraction] = []
    for op, n in terms:
        if op in ("x", "×", "*"):
            sums[-1] *= n
        elif op in ("/", "÷"):
            if n == 0:
                return None
            sums[-1] /= n
        else:
            sums.append(-n if op == "-" else n)
    return sum(sums, Fraction(0))
