"""A model as judge, MT-Bench style (Zheng et al., 2023, "Judging LLM-as-a-Judge with MT-Bench and
Chatbot Arena"), with the paper's own questions and judge prompts (data/mt_bench, from FastChat):
single-answer grading on a 1-10 scale, and pairwise comparison against a reference model asked in
both orders, where a verdict that flips with the order is a tie (the paper's guard against
position bias). Math, reasoning and coding questions with a reference answer use the paper's
reference-guided prompts; the second turn uses the multi-turn prompts.

The judge is any OpenAI-compatible chat endpoint (`base_url`, `model`: vLLM's server, a hosted
API), asked greedily. Every reply is kept raw beside its verdict; a reply with no verdict, a
refusal, a timeout or an HTTP error is counted as such and scores nothing, so a bad judge shows in
the counts instead of stopping the evaluation."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cache
from importlib import resources

from posttrain.verifiers.refusal import is_refusal

REFERENCE_GUIDED = ("math", "reasoning", "coding")     # as the paper's judge
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
VERDICT = re.compile(r"\[\[([ABC])\]\]")
OUTCOMES = ("ok", "no_verdict", "refused", "timeout", "error")


def _data(name: str) -> list[dict]:
    text = resources.files("posttrain.inference").joinpath("data", "mt_bench", name).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@cache
def judge_prompts() -> dict[str, dict]:
    return {p["name"]: p for p in _data("judge_prompts.jsonl")}


def mt_bench_questions() -> list[dict]:
    """The 80 questions: question_id, category, turns (two), reference (some)."""
    return _data("question.jsonl")


@dataclass
class Reply:
    """One judge call: its raw text (None when there was none) and what became of it."""
    text: str | None
    outcome: str
    detail: str = ""


@dataclass
class JudgeClient:
    base_url: str
    model: str
    timeout: float = 120.0
    max_tokens: int = 1024

    def ask(self, system: str, user: str) -> Reply:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                           "messages": [{"role": "system", "content": system},
                                        {"role": "user", "content": user}]}).encode()
        request = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as res:
                text = json.loads(res.read())["choices"][0]["message"]["content"]
        except TimeoutError as err:
            return Reply(None, "timeout", str(err))
        except urllib.error.URLError as err:   # HTTPError too: a status the server chose
            timed_out = isinstance(getattr(err, "reason", None), TimeoutError)
            return Reply(None, "timeout" if timed_out else "error", str(err))
        except (ValueError, KeyError, IndexError, TypeError) as err:     # not an OpenAI-shaped reply
            return Reply(None, "error", f"malformed response: {err}")
        return Reply(text, "ok") if isinstance(text, str) else Reply(None, "error", "no message content")

    def describe(self) -> dict:
        """What the scores came from: saved beside them."""
        return {"base_url": self.base_url, "model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                "prompts": "MT-Bench judge prompts (FastChat judge_prompts.jsonl)"}


def _template(kind: str, question: dict, turn: int) -> tuple[dict, dict]:
    """The judge prompt for a question and turn, and the reference answers it is given."""
    guided = question.get("category") in REFERENCE_GUIDED and question.get("reference")
    name = f"{kind}-{'math-v1' if guided else ('v1' if kind == 'single' else 'v2')}{'-multi-turn' if turn == 2 else ''}"
    refs = {f"ref_answer_{i + 1}": r for i, r in enumerate(question.get("reference") or [])} if guided else {}
    return judge_prompts()[name], refs


def _parsed(reply: Reply, pattern: re.Pattern) -> tuple[str | None, str]:
    """The verdict a reply states (the first match, as the paper's parser takes) and the outcome."""
    if reply.outcome != "ok":
        return None, reply.outcome
    found = pattern.search(reply.text)
    if found:
        return found.group(1), "ok"
    return None, "refused" if is_refusal(reply.text) else "no_verdict"


def grade(judge: JudgeClient, question: dict, answers: list[str], turn: int = 1) -> dict:
    """Single-answer grading of the model's answer to `turn` (1 or 2; the second sees the whole
    conversation): {"score": 1-10 or None, "outcome", "raw"}."""
    prompt, refs = _template("single", question, turn)
    q = question["turns"]
    fields = ({"question": q[0], "answer": answers[0]} if turn == 1 else
              {"question_1": q[0], "answer_1": answers[0], "question_2": q[1], "answer_2": answers[1]})
    reply = judge.ask(prompt["system_prompt"], prompt["prompt_template"].format(**fields, **refs))
    rating, outcome = _parsed(reply, RATING)
    score = float(rating) if rating is not None else None
    if score is not None and not 1 <= score <= 10:
        score, outcome = None, "no_verdict"
    return {"score": score, "outcome": outcome, "raw": reply.text, "detail": reply.detail,
            "prompt": prompt["name"]}


def compare(judge: JudgeClient, question: dict, answers: list[str], reference: list[str], turn: int = 1) -> dict:
    """The model's answers against a reference model's, asked twice with the two swapped:
    "win", "loss" or "tie" for the model; a verdict that changes with the order is a tie. None
    when either order gave no verdict."""
    prompt, refs = _template("pair", question, turn)
    q = question["turns"]

    def ask(a: list[str], b: list[str]) -> Reply:
        fields = ({"question": q[0], "answer_a": a[0], "answer_b": b[0]} if turn == 1 else
                  {"question_1": q[0], "question_2": q[1], "answer_a_1": a[0], "answer_a_2": a[1],
                   "answer_b_1": b[0], "answer_b_2": b[1]})
        return judge.ask(prompt["system_prompt"], prompt["prompt_template"].format(**fields, **refs))

    first, second = ask(answers, reference), ask(reference, answers)
    (v1, o1), (v2, o2) = _parsed(first, VERDICT), _parsed(second, VERDICT)
    result = None
    if v1 is not None and v2 is not None:
        as_first = {"A": "win", "B": "loss", "C": "tie"}[v1]
        as_second = {"A": "loss", "B": "win", "C": "tie"}[v2]
        result = as_first if as_first == as_second else "tie"
    return {"result": result, "outcomes": [o1, o2], "verdicts": [v1, v2], "raw": [first.text, second.text],
            "prompt": prompt["name"]}
