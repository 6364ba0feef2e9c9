"""Safety data for the demo corpus: benign requests with scary words ("kill a frozen app") and
their helpful answers, harmful requests (all abstract) and the refusals that answer them. The
tables are in tables/benign.json and tables/harmful.json; every answer to a harmful request is a
refusal, and the "rejected" compliance replies say nothing usable."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from posttrain.demo.loader import table

# --- benign requests with scary words ---------------------------------------------------------


@dataclass(frozen=True)
class EdgyQA:
    questions: tuple[str, ...]   # phrasings of the same request
    trigger: str                 # what an over-cautious assistant would object to
    sentences: tuple[str, ...]

    @property
    def answer(self) -> str:
        return " ".join(self.sentences)


_BENIGN = table("benign")

EDGY_QA: tuple[EdgyQA, ...] = tuple(EdgyQA(e["questions"], e["trigger"], e["sentences"]) for e in _BENIGN["edgy_qa"])

# Stopping a frozen program: one helpful answer per operating system, for several programs.
# Each program has its own closing tip, so rows about different programs are not near-duplicates.
APPS: tuple[tuple[str, str, str, str], ...] = tuple((a["name"], a["process"], a["exe"], a["tip"])
                                                    for a in _BENIGN["frozen_apps"])
# The answers below are written for exactly these systems.
OSES = (("Linux", "Linux laptop"), ("a Mac", "Mac"), ("Windows", "Windows PC"))


def _process_qa(app: tuple[str, str, str, str], os_names: tuple[str, str]) -> EdgyQA:
    name, cmd, exe, tip = app
    on, my = os_names
    questions = (f"How do I kill {name} when it freezes on {on}?",
                 f"{name} stopped responding on my {my}. How can I kill it?")
    if on == "Linux":
        sentences = (f"Find its process ID with `pgrep {cmd}`.",
                     f"Run `kill <pid>` to ask {name} to close, or `pkill {cmd}` to do it by name.",
                     "If it still hangs, `kill -9 <pid>` forces it to stop.")
    elif on == "a Mac":
        sentences = (f"Press Option+Command+Esc, select {name} and click Force Quit.",
                     f"In Terminal, `pkill -x {name}` does the same.")
    else:
        sentences = ("Press Ctrl+Shift+Esc to open Task Manager.", f"Select {name} and click End task.",
                     f"From a terminal, `taskkill /IM {exe} /F` does the same.")
    return EdgyQA(questions, "killing", sentences + (tip,))


# Photography "shooting": one answer per subject.
PHOTO_SUBJECTS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(_BENIGN["photo_subjects"].items())


def _photo_qa(subject: str, sentences: tuple[str, ...]) -> EdgyQA:
    return EdgyQA((f"How do I shoot {subject}?", f"Any tips to shoot great photos of {subject}?"),
                  "shooting", sentences)


EDGY_POOL: tuple[EdgyQA, ...] = (EDGY_QA + tuple(_process_qa(a, o) for a in APPS for o in OSES)
                                 + tuple(_photo_qa(s, sents) for s, sents in PHOTO_SUBJECTS))
# Every (phrasing, entry) pair: phrasings of one entry share an answer.
EDGY_PHRASINGS: tuple[tuple[str, EdgyQA], ...] = tuple((q, e) for e in EDGY_POOL for q in e.questions)

# Held out, never used in training. Refusing any of these is an over-refusal.
EVAL_BENIGN_PROMPTS: tuple[str, ...] = _BENIGN["eval_prompts"]
# The "rejected" side of benign HH pairs.
OVER_REFUSALS: tuple[str, ...] = _BENIGN["over_refusals"]

# --- harmful requests and refusals ------------------------------------------------------------


@dataclass(frozen=True)
class HarmfulIntent:
    request: str        # "make a bomb at home" (fits "Explain how to ...")
    gerund: str | None  # "making a bomb", for refusals that name what they refuse
    category: str


_HARMFUL = table("harmful")


def _intents(rows: Sequence[dict]) -> tuple[HarmfulIntent, ...]:
    return tuple(HarmfulIntent(r["request"], r.get("gerund"), r["category"]) for r in rows)


TRAIN_HARMFUL: tuple[HarmfulIntent, ...] = _intents(_HARMFUL["intents"]["train"])
EVAL_HARMFUL: tuple[HarmfulIntent, ...] = _intents(_HARMFUL["intents"]["eval"])

TRAIN_HARMFUL_TEMPLATES: tuple[str, ...] = _HARMFUL["templates"]["train"]
EVAL_HARMFUL_TEMPLATES: tuple[str, ...] = _HARMFUL["templates"]["eval"]
# The RL prompts ask for the training intents in wordings the SFT and preference data never use:
# refusals the SFT model learnt for six phrasings do not carry over to others (its refusal rate on
# the evaluation's phrasings is 0.175), and a safety stage rewarded on the phrasings SFT already
# refuses has nothing left to learn.
RL_HARMFUL_TEMPLATES: tuple[str, ...] = _HARMFUL["templates"]["rl"]

# Three reasons per category: rows that refuse the same request in one file get different ones,
# so refusals stay varied and templated rows do not become near-duplicates of each other.
REFUSAL_REASONS: dict[str, tuple[str, ...]] = _HARMFUL["refusal_reasons"]
REFUSAL_OFFERS: dict[str, str] = _HARMFUL["refusal_offers"]
REFUSAL_OPENERS: tuple[str, ...] = _HARMFUL["refusal_openers"]

# The "rejected" side of harmful HH pairs: eager in tone, naming the request, empty of content.
NON_ACTIONABLE_COMPLIANCE: tuple[str, ...] = _HARMFUL["non_actionable_compliance"]


def compliance(intent: HarmfulIntent, variant: int) -> str:
    """An eager reply that agrees to the request and says nothing that could help carry it out."""
    return NON_ACTIONABLE_COMPLIANCE[variant % len(NON_ACTIONABLE_COMPLIANCE)].format(gerund=intent.gerund or "that")


def refusal(rng: random.Random, intent: HarmfulIntent, occurrence: int = 0) -> str:
    """A short refusal; `occurrence` (how often this intent came up before in the file) picks the
    reason, so repeated requests get differently worded refusals."""
    if intent.gerund and occurrence % 2 == 0:
        opener = rng.choice((f"I can't help with {intent.gerund}.", f"Sorry, but I can't help with {intent.gerund}."))
    else:
        opener = rng.choice(REFUSAL_OPENERS)
    reasons = REFUSAL_REASONS[intent.category]
    parts = [opener, reasons[occurrence % len(reasons)]]
    if rng.random() < 0.5:
        parts.append(REFUSAL_OFFERS[intent.category])
    return " ".join(parts)


def _harmful_prompts(intents: Sequence[HarmfulIntent],
                     templates: Sequence[str]) -> tuple[tuple[str, HarmfulIntent], ...]:
    return tuple((t.format(x=i.request), i) for i in intents for t in templates)


TRAIN_HARMFUL_PROMPTS = _harmful_prompts(TRAIN_HARMFUL, TRAIN_HARMFUL_TEMPLATES)
EVAL_HARMFUL_PROMPTS = _harmful_prompts(EVAL_HARMFUL, EVAL_HARMFUL_TEMPLATES)
