"""Progress lines: whole lines, at most one per interval, the rate and the time left."""

from __future__ import annotations

import io

from posttrain.core import progress


def test_lines_say_where_a_run_is_and_when_it_ends(monkeypatch):
    clock = iter([0.0, 6.0, 8.0, 12.0, 30.0, 120.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    p = progress.Progress("sft", 20, interval=15, stream=out)   # starts at 0.0
    p.set(2)      # 6 s: the first update always writes
    p.set(3)      # 8 s: within the interval, nothing
    p.set(4)      # 12 s: nothing
    p.set(10)     # 30 s: 24 s since the last line
    p.set(20)     # the end always writes
    assert out.getvalue().splitlines() == [
        "sft: step 2 of 20 (10%), 3.0 s/step, about 54 s left",
        "sft: step 10 of 20 (50%), 3.0 s/step, about 30 s left",
        "sft: step 20 of 20 (100%), 6.0 s/step, done in 2 min 0 s"]


def test_a_resumed_run_counts_its_rate_from_where_it_resumed(monkeypatch):
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    progress.Progress("PPO safety", 12, stream=out, start=8).set(9)
    assert out.getvalue() == "PPO safety: step 9 of 12 (75%), 10.0 s/step, about 30 s left\n"
    assert progress.duration(3725) == "1 h 2 min"


def test_too_early_to_tell_gives_no_estimate():
    out = io.StringIO()
    progress.Progress("safety", 160, "answer", stream=out).update()
    assert out.getvalue() == "safety: answer 1 of 160 (1%)\n"
