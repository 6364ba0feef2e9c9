"""Faults around the workflow tools, on the tiny DAG: Snakemake killed in the middle of a rule, a
tracked artifact changed behind DVC's back, two `dvc repro` at once."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import bin_path, run
from posttrain.core import checkpoints

TINY = ["--configfile", "tiny.yaml"]    # last: --configfile takes every argument after it


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _descendants(pid: int) -> list[int]:
    out = []
    for child in _children(pid):
        out += [child, *_descendants(child)]
    return out


def test_snakemake_killed_mid_rule_then_rerun_incomplete_resumes_from_the_checkpoint(project):
    """Snakemake and the SFT job killed at once (a lost node): the next run is refused with the
    reason (the lock); once unlocked, the plan names the missing output, the rerun succeeds
    and the SFT job resumes from the checkpoint the killed one left."""
    proc = subprocess.Popen([bin_path("snakemake"), "results/sft", "--cores", "2", *TINY], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = lambda: list(project.glob(f".posttrain/checkpoints/sft-*/checkpoint-3/{checkpoints.COMPLETE}"))  # noqa: E731
    deadline = time.time() + 600
    while not marker() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "snakemake finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (project / "results/sft/manifest.json").exists()

    locked = run([bin_path("snakemake"), "results/sft", "--cores", "2", *TINY], project, check=False)
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout + locked.stderr
    run([bin_path("snakemake"), "--unlock", *TINY], project)
    # the stage writes its output folder only at the end: nothing half-written can pass for done
    # (outputs Snakemake itself saw half-made are rerun: the default profile sets rerun-incomplete)
    plan = run([bin_path("snakemake"), "results/sft", "-n", *TINY], project).stdout
    assert "reason: Missing output files: results/sft" in plan, plan[-3000:]
    run([bin_path("snakemake"), "results/sft", "--cores", "2", *TINY], project)
    metrics = json.loads((project / "results/sft/metrics.json").read_text())
    assert metrics["resumed_from_step"] == 3 and metrics["steps"] == 6


def test_a_flipped_byte_shows_as_modified_and_repro_restores_it(project):
    run([bin_path("dvc"), "init", "-q"], project)
    run([bin_path("dvc"), "repro", "-q", "demo_data"], project)
    assert "up to date" in run([bin_path("dvc"), "status", "demo_data"], project).stdout
    target = sorted((project / "results/demo_data").glob("*.jsonl"))[0]
    good = target.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    target.write_bytes(bytes(flipped))
    status = run([bin_path("dvc"), "status", "demo_data"], project).stdout
    assert "modified:" in status and "results/demo_data" in status
    run([bin_path("dvc"), "repro", "-q", "demo_data"], project)
    assert target.read_bytes() == good


def test_two_dvc_repro_at_once_one_waits_or_fails_clearly(project):
    """DVC locks what a running `dvc repro` reads and writes: a second one of the same stage
    fails at once and says which process holds it; the first one's results are whole."""
    run([bin_path("dvc"), "init", "-q"], project)
    first = subprocess.Popen([bin_path("dvc"), "repro", "base_model"], cwd=project, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not any(b"base-model" in Path(f"/proc/{p}/cmdline").read_bytes() for p in _descendants(first.pid)
                  if Path(f"/proc/{p}/cmdline").exists()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the first dvc repro ended before the second could start"
    second = run([bin_path("dvc"), "repro", "base_model"], project, check=False)
    said = second.stdout + second.stderr
    assert second.returncode != 0 and ("is busy" in said or "Unable to acquire lock" in said), said[-2000:]
    # a stage that shares nothing with the running one may run beside it
    run([bin_path("dvc"), "repro", "demo_data"], project)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    assert "up to date" in run([bin_path("dvc"), "status", "base_model", "demo_data"], project).stdout
