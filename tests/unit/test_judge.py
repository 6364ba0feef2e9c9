"""The MT-Bench judge client against an OpenAI-compatible HTTP server on this machine whose replies
the test scripts: a judge model cannot be made to be biased, silent, slow or broken on demand,
and those are the cases the client must survive. (The same client against vLLM serving a real
model: tests/stages/test_serve.py.)"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from posttrain.inference import judge

QUESTION = next(q for q in judge.mt_bench_questions() if q["category"] == "writing")
MATH = next(q for q in judge.mt_bench_questions() if q["category"] == "math")


@pytest.fixture(scope="module")
def scripted():
    """A chat-completions endpoint; `state["reply"]` turns the request's user message into the reply
    (a string, or an int: that HTTP status, or "garbage", or "sleep")."""
    state = {"reply": None, "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append(body)
            reply = state["reply"](body["messages"][-1]["content"])
            if reply == "sleep":
                time.sleep(2)
                reply = "Rating: [[5]]"
            if isinstance(reply, int):
                self.send_response(reply)
                self.end_headers()
                return
            payload = b"{not json" if reply == "garbage" else json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):     # the client gave up waiting (the timeout case)
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, judge.JudgeClient(f"http://127.0.0.1:{server.server_address[1]}/v1", "scripted", timeout=1)
    server.shutdown()


def test_every_question_fills_every_prompt_it_can_meet():
    questions = judge.mt_bench_questions()
    assert len(questions) == 80 and all(len(q["turns"]) == 2 for q in questions)
    used = set()
    for q in questions:
        for kind in ("single", "pair"):
            for turn in (1, 2):
                prompt, refs = judge._template(kind, q, turn)
                used.add(prompt["name"])
                fields = set(re.findall(r"\{(\w+)\}", prompt["prompt_template"]))
                assert {f for f in fields if f.startswith("ref_answer")} <= set(refs), (q["question_id"], kind)
    assert used == set(judge.judge_prompts())


def test_a_well_formed_rating_and_the_request_the_judge_gets(scripted):
    state, client = scripted
    state["reply"] = lambda prompt: "The answer is vivid and accurate. Rating: [[8]]"
    out = judge.grade(client, QUESTION, ["A blog post.", "A rewrite."], turn=2)
    assert out == {**out, "score": 8.0, "outcome": "ok", "prompt": "single-v1-multi-turn"}
    request = state["requests"][-1]
    assert request["temperature"] == 0 and request["model"] == "scripted"
    assert QUESTION["turns"][1] in request["messages"][-1]["content"]
    out = judge.grade(client, MATH, ["3", "5pi"])
    assert out["prompt"] == "single-math-v1"
    assert MATH["reference"][0] in state["requests"][-1]["messages"][-1]["content"]


@pytest.mark.parametrize("reply, outcome", [
    (lambda p: "It is fine, I suppose.", "no_verdict"),
    (lambda p: "Rating: [[11]]", "no_verdict"),
    (lambda p: "I'm sorry, but I can't help with rating this.", "refused"),
    (lambda p: "sleep", "timeout"),
    (lambda p: 500, "error"),
    (lambda p: "garbage", "error"),
])
def test_a_bad_judge_is_counted_not_crashed_on(scripted, reply, outcome):
    state, client = scripted
    state["reply"] = reply
    out = judge.grade(client, QUESTION, ["An answer."])
    assert out["score"] is None and out["outcome"] == outcome


def _slot(prompt: str, letter: str) -> str:
    return prompt.split(f"[The Start of Assistant {letter}'s Answer]")[1].split("[The End")[0]


def test_the_swap_turns_a_judge_biased_to_the_first_answer_into_a_tie(scripted):
    state, client = scripted
    state["reply"] = lambda prompt: "Assistant A is better. [[A]]"
    out = judge.compare(client, QUESTION, ["Mine."], ["Reference."])
    assert out["verdicts"] == ["A", "A"] and out["result"] == "tie"
    # a judge that reads the answers gives the same verdict both ways
    state["reply"] = lambda prompt: "[[A]]" if "GOOD" in _slot(prompt, "A") else "[[B]]"
    assert judge.compare(client, QUESTION, ["GOOD answer."], ["Reference."])["result"] == "win"
    assert judge.compare(client, QUESTION, ["Poor answer."], ["GOOD reference."])["result"] == "loss"
    state["reply"] = lambda prompt: "[[A]]" if "GOOD" in _slot(prompt, "A") else "no idea"
    out = judge.compare(client, QUESTION, ["GOOD answer."], ["Reference."])
    assert out["result"] is None and out["outcomes"] == ["ok", "no_verdict"]
