"""Helpful Q&A for the demo corpus: general questions with short, correct answers, the questions
generated from capitals, unit conversions and opposites, follow-up turns, system prompts and the
unhelpful replies of preference pairs. The tables are in tables/helpful.json."""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.demo.loader import table


@dataclass(frozen=True)
class QA:
    question: str
    sentences: tuple[str, ...]

    @property
    def answer(self) -> str:
        return " ".join(self.sentences)


def _qa(question: str, *sentences: str) -> QA:
    return QA(question, sentences)


_HELPFUL = table("helpful")

GENERAL_QA: tuple[QA, ...] = tuple(QA(r["question"], r["sentences"]) for r in _HELPFUL["general_qa"])
CAPITALS: tuple[tuple[str, str], ...] = tuple(_HELPFUL["capitals"].items())
CONVERSIONS: tuple[tuple[str, str, str, int], ...] = tuple((c["small"], c["unit"], c["units"], c["factor"])
                                                          for c in _HELPFUL["conversions"])
OPPOSITES: tuple[tuple[str, str], ...] = tuple(_HELPFUL["opposites"].items())


def _general_pool() -> tuple[QA, ...]:
    pool = list(GENERAL_QA)
    pool += [_qa(f"What is the capital of {c}?", f"The capital of {c} is {cap}.") for c, cap in CAPITALS]
    for small, unit, units, factor in CONVERSIONS:
        for n in range(2, 7):
            pool.append(_qa(f"How many {small} are in {n} {units}?", f"There are {factor} {small} in one {unit}.",
                            f"So {n} {units} is {n} × {factor} = {n * factor} {small}."))
    pool += [_qa(f'What is the opposite of "{w}"?', f'The opposite of "{w}" is "{o}".') for w, o in OPPOSITES]
    return tuple(pool)


GENERAL_POOL = _general_pool()

# Second user turns for multi-turn conversations, answered from the first answer's sentences.
FOLLOW_UPS: tuple[tuple[str, str], ...] = tuple((f["question"], f["answer_with"]) for f in _HELPFUL["follow_ups"])


def follow_up_answer(qa: QA, how: str) -> str:
    if how == "first":
        return qa.sentences[0]
    return "\n".join(f"- {s}" for s in qa.sentences)


SHAREGPT_SYSTEMS: tuple[str, ...] = _HELPFUL["system_prompts"]["sharegpt"]
MESSAGES_SYSTEMS: tuple[str, ...] = _HELPFUL["system_prompts"]["messages"]
UNHELPFUL_REPLIES: tuple[str, ...] = _HELPFUL["unhelpful_replies"]
