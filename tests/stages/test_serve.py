"""`posttrain serve`: vLLM's real OpenAI-compatible server (vLLM's CPU build, from .venv-serve) on a
merged export of a tiny model. One server for the module: it answers chat requests (the official
OpenAI client included), its greedy answers are transformers' greedy answers of the same weights,
it renders the model's own chat template, it serves 32 requests at once, and SIGTERM stops it and
every process vLLM started."""

import json
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_OVERLAY, bin_path
from posttrain.config import load_params
from posttrain.stages import base_model, export

SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
PROMPTS = ["What is 2 plus 3?", "Name three colours.", "Write a haiku about the sea.", "Why is the sky blue?",
           "List the prime numbers below 20.", "hi"]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def servable(tmp_path_factory, tiny_base):
    """export-merge's folder (bfloat16 weights, tokenizer, chat template, generation config) of a
    tiny Llama that vLLM's CPU attention runs: the tiny base's heads are 16 wide and its kernels
    take 32, 64, 80, ... (a 16-wide model starts, then fails its first request). Large random
    weights, as conftest's chatty_model, so answers vary and end at different points."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = tmp_path_factory.mktemp("serve")
    config = AutoConfig.from_pretrained(tiny_base)
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 2, 2, 32
    model = AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0, generator=gen)
    model.save_pretrained(tmp / "weights")
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(tmp / "weights")
    overlay = tmp / "o.yaml"
    overlay.write_text(json.dumps({"model": {"base": str(tmp / "weights")}}))
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay])
    base_model.main(params, tmp / "base")
    export.merge(params, tmp / "base", tmp / "merged")
    return tmp / "merged"


class Served:
    def __init__(self, proc, url, model, log, vllm_pgid):
        self.proc, self.url, self.model, self.log, self.vllm_pgid = proc, url, model, log, vllm_pgid

    def post(self, path, body, timeout=300):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def chat(self, messages, **kw):
        return self.post("/v1/chat/completions", {"model": self.model, "messages": messages, **kw})


@pytest.fixture(scope="module")
def served(servable, tmp_path_factory):
    """`posttrain serve` on the export, computing in float32 (the export's bfloat16 weights, widened
    exactly), without torch.compile (start-up in well under a minute instead of several)."""
    assert SERVE_PYTHON.is_file(), f"vLLM's environment is missing ({SERVE_PYTHON}): run `make setup`"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve_log") / "vllm.log"
    proc = subprocess.Popen([bin_path("posttrain"), "serve", str(servable), "--port", str(port),
                             "--max-model-len", "2048", "--kv-cache-gb", "0.5", "--timeout", "600", "--log", str(log),
                             "--vllm", "--dtype", "float32", "--enforce-eager"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:           # `posttrain serve` exits by itself when vLLM fails or times out
        lines.append(line)
        if line.startswith("serving "):
            break
    else:
        proc.wait()
        pytest.fail(f"posttrain serve exited with {proc.returncode} before serving:\n{''.join(lines)[-6000:]}")
    # vLLM leads a process group of its own: the server process is `posttrain serve`'s child
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    served = Served(proc, f"http://127.0.0.1:{port}", line.split("'")[1], log, int(children[0]))
    yield served
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def _greedy_ids(model, ids, stops):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=stops, pad_token_id=stops[0])
    return out[0, len(ids):].tolist()


def test_the_openai_client_gets_a_chat_answer(served):
    # the official client (vLLM's environment has it), as a user's code would call the server
    script = ("import sys\nfrom openai import OpenAI\n"
              "client = OpenAI(base_url=sys.argv[1] + '/v1', api_key='none')\n"
              "r = client.chat.completions.create(model=sys.argv[2], max_tokens=8, temperature=0,\n"
              "    messages=[{'role': 'user', 'content': 'What is 2 plus 3?'}])\n"
              "print(r.choices[0].finish_reason, r.usage.completion_tokens, repr(r.choices[0].message.content))\n")
    res = subprocess.run([str(SERVE_PYTHON), "-c", script, served.url, served.model], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    finish, tokens, content = res.stdout.split(" ", 2)
    assert finish in ("length", "stop") and 1 <= int(tokens) <= 8 and content.strip() not in ("''", "None")
    listed = json.loads(urllib.request.urlopen(served.url + "/v1/models", timeout=30).read())
    assert [m["id"] for m in listed["data"]] == [served.model] and listed["data"][0]["max_model_len"] == 2048


def test_greedy_answers_are_transformers_greedy_answers_of_the_same_weights(served, servable):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.inference.generation import generate, stop_ids

    tokenizer = AutoTokenizer.from_pretrained(servable)
    model = AutoModelForCausalLM.from_pretrained(servable, dtype=torch.float32)
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    texts = generate(model, tokenizer, conversations, max_new_tokens=NEW_TOKENS)      # the evaluation's decoding
    stops = stop_ids(tokenizer)
    finishes = set()
    for conversation, text in zip(conversations, texts):
        got = served.chat(conversation, max_tokens=NEW_TOKENS, temperature=0, return_token_ids=True, logprobs=True)
        choice = got["choices"][0]
        prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True)["input_ids"]
        want = _greedy_ids(model, prompt, stops)
        # vLLM leaves the end-of-turn token in token_ids; the text ends before it in both
        assert choice["token_ids"] == want, conversation
        # and the numbers: each token's log-probability as transformers computes it (they differ by
        # ~2e-4 here; the closest two candidates along these answers are 0.02 apart)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + want])).logits[0, len(prompt) - 1:-1]
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(want)[:, None])[:, 0]
        served_lp = torch.tensor([c["logprob"] for c in choice["logprobs"]["content"]])
        assert torch.allclose(served_lp, expected, atol=2e-3), (served_lp - expected).abs().max()
        # vLLM decodes as it goes and drops a last byte-level token that is an incomplete UTF-8
        # character; transformers decodes it to U+FFFD
        assert choice["message"]["content"].strip() == text.removesuffix("\ufffd").strip(), conversation
        finishes.add(choice["finish_reason"])
    assert finishes == {"length", "stop"}       # answers that stop at <|im_end|> and answers cut at the limit


def test_the_server_renders_the_models_own_chat_template(served, servable):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(servable)
    conversation = [{"role": "system", "content": "You answer in one word."},
                    {"role": "user", "content": "What is 2 plus 3?"},
                    {"role": "assistant", "content": "5."},
                    {"role": "user", "content": "And 4 plus 4?"}]
    want = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True)["input_ids"]
    got = served.chat(conversation, max_tokens=1, temperature=0, return_token_ids=True)
    assert got["prompt_token_ids"] == want and got["usage"]["prompt_tokens"] == len(want)
    assert tokenizer.decode(want).endswith("<|im_end|>\n<|im_start|>assistant\n")
    tokenized = served.post("/tokenize", {"model": served.model, "messages": conversation,
                                          "add_generation_prompt": True})
    assert tokenized["tokens"] == want


def test_the_mt_bench_judge_client_against_the_real_server(served):
    # the tiny model is no judge: its replies are kept raw and counted (no verdict, a refusal),
    # as is an error the server chose. The timeout is tested against a server that never answers
    # (tests/unit/test_judge.py): here vLLM's busy CPU threads can starve the client long enough
    # that the whole reply has arrived before its first 1 ms wait
    from posttrain.inference import judge

    client = judge.JudgeClient(served.url + "/v1", served.model, max_tokens=16)
    question = judge.mt_bench_questions()[0]
    graded = judge.grade(client, question, ["Hawaii was lovely."])
    assert graded["raw"] and graded["outcome"] in ("ok", "no_verdict", "refused")
    assert (graded["score"] is None) == (graded["outcome"] != "ok")
    paired = judge.compare(client, question, ["Hawaii was lovely."], ["I went to Hawaii."])
    assert all(paired["raw"]) and len(paired["outcomes"]) == 2
    unknown = judge.JudgeClient(served.url + "/v1", "no-such-model")
    assert judge.grade(unknown, question, ["Hawaii."])["outcome"] == "error"       # vLLM answers 404


def _metric(served, name):
    """The sum of a Prometheus metric's samples on the server's /metrics."""
    text = urllib.request.urlopen(served.url + "/metrics", timeout=30).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_32_concurrent_requests_all_complete(served):
    # 64 tokens each, past <|im_end|>, so that they overlap in the engine
    conversations = [[{"role": "user", "content": f"Question {i}: what is {i} plus {i + 1}?"}] for i in range(32)]
    before = {m: _metric(served, m) for m in ("vllm:request_success_total", "vllm:iteration_tokens_total_count")}
    together = threading.Barrier(32)      # all 32 sent at once, not as each thread happens to start

    def ask(conversation):
        together.wait(timeout=60)
        return served.chat(conversation, max_tokens=64, temperature=0, ignore_eos=True)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, conversations))
    for a in answers:
        choice = a["choices"][0]
        assert choice["finish_reason"] == "length" and a["usage"]["completion_tokens"] == 64
        assert choice["message"]["content"]
    after = {m: _metric(served, m) - before[m] for m in before}
    assert after["vllm:request_success_total"] == 32
    # batched: the engine made the 32 x 64 tokens in far fewer steps than one request at a time would
    assert after["vllm:iteration_tokens_total_count"] < 32 * 64 / 4, after


def _alive_in_group(pgid):
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(stat.parent.name)
    return alive


def test_sigterm_stops_the_server_and_every_vllm_process(served):
    # last in the module: it stops the shared server
    assert len(_alive_in_group(served.vllm_pgid)) >= 2          # the API server and its engine at least
    start = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    out, _ = served.proc.communicate(timeout=120)
    assert served.proc.returncode == 0, out
    assert "stopping vLLM" in out
    assert not _alive_in_group(served.vllm_pgid), f"left running after {time.monotonic() - start:.0f} s"
    with pytest.raises(OSError):
        urllib.request.urlopen(served.url + "/health", timeout=5)
    assert "Application shutdown complete" in served.log.read_text()
