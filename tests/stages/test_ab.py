"""Human A/B (`posttrain ab`): the real server on this machine, votes cast in Chromium, the
database under concurrent and forged requests and a killed server, and the votes as a win rate and
as preference pairs the reward stage trains on."""

import json
import shutil
import signal
import sqlite3
import subprocess
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT, bin_path, read_jsonl, run, train_tiny_reward_model, write_jsonl
from posttrain.ab import results
from posttrain.ab.answers import ensure_answers, read_prompts
from posttrain.ab.server import make_server
from posttrain.ab.store import VoteStore

BROWSER = ROOT / "tests" / "browser"
HOSTILE = ['<script>window.__injected = true</script>', '<img src=x onerror="window.__injected = true">']


@pytest.fixture(scope="module")
def answered(tmp_path_factory, tiny_base, chatty_model):
    """A votes database where two tiny models (real generation: the chatty model and a perturbed
    copy, both of which write something) answered 10 prompts (each annotator sees all 10); two of
    the second's answers replaced by markup, as a model could write."""
    import torch
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("ab")
    for name, seed in (("alpha", None), ("omega", 2)):
        shutil.copytree(chatty_model, tmp / name)
        shutil.copy(tiny_base / "manifest.json", tmp / name / "manifest.json")   # a model artifact like any other
        if seed is not None:
            model = AutoModelForCausalLM.from_pretrained(tmp / name)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
            model.save_pretrained(tmp / name)
    prompts = write_jsonl(tmp / "prompts.jsonl", [
        {"id": f"p{i:02d}", "prompt": f"What is {i} plus {i + 1}?", "subset": "helpful"} for i in range(10)])
    store = VoteStore(tmp / "votes.sqlite")
    ensure_answers(store, {"model_alpha": tmp / "alpha", "model_omega": tmp / "omega"},
                   read_prompts(prompts, "helpful", 10), max_new_tokens=12)
    with store._transaction() as db:
        for pid, text in zip(("p00", "p01"), HOSTILE):
            db.execute("UPDATE answers SET answer = ? WHERE prompt_id = ? AND model = 'model_omega'", (text, pid))
    return tmp / "votes.sqlite"


@pytest.fixture
def server(answered, tmp_path):
    db = tmp_path / "votes.sqlite"
    shutil.copy(answered, db)
    srv = make_server(VoteStore(db), ("model_alpha", "model_omega"), port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", VoteStore(db)
    srv.shutdown()
    srv.server_close()


def _call(url, body=None, *, content_type="application/json", headers=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={**({"Content-Type": content_type} if data else {}),
                                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as res:
            return res.status, json.loads(res.read() or b"{}"), res.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), err.headers


def test_both_models_answered_every_prompt_once(answered):
    store = VoteStore(answered)
    assert store.answered("model_alpha") == store.answered("model_omega") == {f"p{i:02d}" for i in range(10)}
    answers = {v for (v,) in sqlite3.connect(answered).execute("SELECT answer FROM answers")}
    assert "" not in answers and len(answers) > 10           # the two models wrote different things
    # answered prompts are not asked again (the folder would not even load)
    ensure_answers(store, {"model_alpha": Path("/nonexistent")}, [("p00", [{"role": "user", "content": "x"}])], 4)


def test_twenty_votes_by_two_people_in_chromium_become_a_win_rate_and_reward_model_data(server, tmp_path,
                                                                                          tiny_base):
    url, store = server
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert (BROWSER / "node_modules" / "puppeteer-core").is_dir(), "make test installs tests/browser (npm)"
    seen = []
    for person in ("alice", "bob"):
        out = run(["node", BROWSER / "ab_votes.mjs", url, chromium, person, "10"], cwd=BROWSER).stdout
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert [line["same"] for line in lines if "reload" in line] == [True]
        cast = [line for line in lines if "choice" in line]
        assert len(cast) == 10 and {c["status"] for c in cast} == {200} and {c["by"] for c in cast} == {"click", "key"}
        page = lines[-1]
        assert not page["errors"] and page["injected"] is False        # markup stayed text
        blob = page["html"] + "".join(page["traffic"])
        assert "alpha" not in blob and "omega" not in blob              # nothing says which model wrote what
        seen += cast
    votes = store.votes()
    assert len(votes) == 20 and {v["annotator"] for v in votes} == {"alice", "bob"}
    # the stored (unblinded) order is the order shown: A's text is model_a's answer
    by_text = {(s["annotator"], s["a"], s["b"]): s["choice"] for s in seen}
    for v in votes:
        assert by_text[(v["annotator"], v["answer_a"], v["answer_b"])] == v["choice"]
    hostile = [s for s in seen if s["a"] in HOSTILE or s["b"] in HOSTILE]
    assert len(hostile) == 4                                           # both people saw both
    assert all("&lt;" in s["aHtml"] for s in hostile if s["a"] in HOSTILE)   # escaped, shown literally

    rows = results.summary(votes)
    assert len(rows) == 1 and rows[0]["votes"] == 20 and rows[0]["annotators"] == 2
    row = rows[0]
    assert row["wins"] + row["losses"] + row["ties"] + row["both_bad"] == 20
    assert row["ci95"][0] <= row["win_rate"] <= row["ci95"][1] and 0 <= row["sign_test_p"] <= 1

    db = store.path
    run([bin_path("posttrain"), "ab", "report", "--db", db, "--out", tmp_path / "report"], cwd=tmp_path)
    assert json.loads((tmp_path / "report" / "ab.json").read_text()) == json.loads(json.dumps(rows))
    assert "win rate (95 % CI)" in (tmp_path / "report" / "ab.md").read_text()
    out = run([bin_path("posttrain"), "ab", "export", "--db", db, "--out", tmp_path / "ab-pairs.jsonl",
               "--unpaired", tmp_path / "ab-ratings.jsonl"], cwd=tmp_path).stdout
    pairs = read_jsonl(tmp_path / "ab-pairs.jsonl")
    assert len(pairs) == row["wins"] + row["losses"] and f"{len(pairs)} preference pairs" in out
    # both-bad votes: thumbs-down ratings that the data stage keeps for KTO
    ratings = read_jsonl(tmp_path / "ab-ratings.jsonl")
    assert len(ratings) == 2 * row["both_bad"] == 4 and {r["label"] for r in ratings} == {False}
    assert "4 thumbs-down ratings from 2 both-bad votes" in out
    from posttrain.config import load_params
    from posttrain.stages import prepare_data

    params = load_params([ROOT / "params.yaml", ROOT / "tests/data/tiny.yaml"])
    prepare_data.main(params, "preference", [str(tmp_path / "ab-ratings.jsonl")], tmp_path / "kto",
                      tokenizer_dir=tiny_base)
    kept = read_jsonl(tmp_path / "kto" / "train.jsonl") + read_jsonl(tmp_path / "kto" / "val.jsonl")
    assert len(kept) == len({json.dumps([r["prompt"], r["completion"]]) for r in ratings})   # one per answer
    assert all(r["label"] is False and r["completion"][0]["role"] == "assistant" for r in kept)
    rm = train_tiny_reward_model(tmp_path, tiny_base, pairs, val_fraction=0.5)   # the data and reward stages
    prepared = read_jsonl(tmp_path / "pref" / "train.jsonl") + read_jsonl(tmp_path / "pref" / "val.jsonl")
    distinct = {json.dumps([p["prompt"], p["chosen"], p["rejected"]]) for p in pairs}   # two people, same verdict
    assert len(prepared) == len(distinct) and (rm / "manifest.json").is_file()


def test_votes_are_checked_counted_once_and_safe_under_concurrency(server):
    url, store = server
    status, pair, headers = _call(f"{url}/api/next?annotator=carol")
    assert status == 200 and set(pair) == {"token", "prompt", "answers", "position", "total"}
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    assert _call(f"{url}/api/next?annotator=carol")[1]["token"] == pair["token"]      # a reload: the same pair
    vote = {"token": pair["token"], "annotator": "carol", "choice": "a"}
    assert _call(f"{url}/api/vote", b"not json")[0] == 400
    assert _call(f"{url}/api/vote", {**vote, "choice": "A!"})[0] == 400
    assert _call(f"{url}/api/vote", ["a", "list"])[0] == 400
    assert _call(f"{url}/api/vote", vote, content_type="text/plain")[0] == 415
    assert _call(f"{url}/api/vote", vote, headers={"Origin": "http://evil.example"})[0] == 403
    assert _call(f"{url}/api/vote", {**vote, "annotator": "mallory"})[0] == 403        # not issued to mallory
    assert _call(f"{url}/api/vote", {**vote, "token": "x" * 32})[0] == 403             # never issued
    assert _call(f"{url}/api/next?annotator=%3Cscript%3E")[0] == 400
    assert _call(f"{url}/api/vote", {**vote, "annotator": "carol'; DROP TABLE votes; --"})[0] == 400
    assert _call(f"{url}/api/vote", vote)[0] == 200
    assert _call(f"{url}/api/vote", vote)[0] == 409                                    # replayed
    assert _call(f"{url}/api/next?annotator=carol")[1]["token"] != pair["token"]

    # 8 people vote at once, each twice on the same pair (a double click): 8 votes, one each
    tokens = {f"voter{i}": _call(f"{url}/api/next?annotator=voter{i}")[1]["token"] for i in range(8)}
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda args: _call(f"{url}/api/vote", {"token": tokens[args[0]], "annotator": args[0],
                                                                      "choice": "b"})[0],
                              [(name, k) for name in tokens for k in range(2)]))
    assert sorted(codes) == [200] * 8 + [409] * 8
    assert len(store.votes()) == 9


def test_a_killed_server_loses_no_vote_and_binds_to_this_machine(answered, tmp_path):
    db = tmp_path / "votes.sqlite"
    shutil.copy(answered, db)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "p00", "prompt": "unused: answered already"}])

    def start():
        proc = subprocess.Popen([bin_path("posttrain"), "ab", "serve", "--models", "model_alpha", "model_omega",
                                 "--prompts",
                                 prompts, "--subset", "", "--db", db, "--port", "0"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, proc.stderr.read()
        return proc, line.split()[2].split("/?")[0]

    (tmp_path / "results").mkdir()       # names resolve under results/, as in a project
    (tmp_path / "results" / "model_alpha").symlink_to(answered.parent / "alpha")
    (tmp_path / "results" / "model_omega").symlink_to(answered.parent / "omega")
    proc, url = start()
    try:
        first = _call(f"{url}/api/next?annotator=dora")[1]
        assert _call(f"{url}/api/vote", {"token": first["token"], "annotator": "dora", "choice": "tie"})[0] == 200
        pending = _call(f"{url}/api/next?annotator=dora")[1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc, url = start()
    try:
        assert _call(f"{url}/api/next?annotator=dora")[1]["token"] == pending["token"]    # still hers to vote on
        assert _call(f"{url}/api/vote", {"token": pending["token"], "annotator": "dora", "choice": "a"})[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0                                                # a clean stop
    assert [v["choice"] for v in VoteStore(db).votes()] == ["tie", "a"]
