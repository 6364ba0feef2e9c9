"""Faults during training, injected into real `posttrain sft` runs on the tiny model: killed,
told to stop, a damaged checkpoint, a full disk. Each time nothing is lost, and the run that
finishes ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import ROOT, TINY_OVERLAY, bin_path, sft_overrides, write_overlay
from posttrain.core import checkpoints, preemption

STEPS, SAVE = 16, 4


def _run_cmd(tiny_base, sft_data, overlay, out):
    return [bin_path("posttrain"), "sft", "--base", str(tiny_base), "--data", str(sft_data), "--out", str(out),
            "--params", str(ROOT / "params.yaml"), "--params", str(TINY_OVERLAY), "--params", str(overlay)]


def _overlay(tmp_path, name):
    cfg = sft_overrides(tmp_path, max_steps=STEPS, save_steps=SAVE, eval_steps=8, lora={"dropout": 0.1})
    return write_overlay(tmp_path, name, {"sft": {**cfg["sft"], "checkpoint_dir": str(tmp_path / f"ck_{name}")}})


def _wait_for(predicate, proc, seconds=300):
    deadline = time.time() + seconds
    while not predicate() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before the fault could be injected; raise max_steps"


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_base, sft_data):
    """The uninterrupted run every faulted run is compared with."""
    tmp = tmp_path_factory.mktemp("straight")
    subprocess.run(_run_cmd(tiny_base, sft_data, _overlay(tmp, "a"), tmp / "a"), check=True, capture_output=True)
    return json.loads((tmp / "a" / "metrics.json").read_text())


def _same_end(metrics, straight):
    assert metrics["steps"] == straight["steps"] == STEPS
    assert metrics["train_loss_last"] == pytest.approx(straight["train_loss_last"], rel=1e-5)
    assert metrics["val_loss_last"] == pytest.approx(straight["val_loss_last"], rel=1e-5)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_stopped_run_resumes_and_matches_an_uninterrupted_one(tmp_path, tiny_base, sft_data, straight, sig):
    """SIGKILL after a checkpoint: the rerun resumes from it. SIGTERM / SIGUSR1 (kill, scancel,
    a time limit): the run saves the step it is in within SLURM's default 30 s grace, exits 75
    and writes no outputs; the rerun resumes from that step."""
    overlay = _overlay(tmp_path, "b")
    proc = subprocess.Popen(_run_cmd(tiny_base, sft_data, overlay, tmp_path / "b"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    marker = lambda: list((tmp_path / "ck_b").glob(f"sft-*/checkpoint-{SAVE}/{checkpoints.COMPLETE}"))  # noqa: E731
    _wait_for(marker, proc)
    sent = time.time()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert not (tmp_path / "b" / "manifest.json").exists()
    (run_dir,) = (tmp_path / "ck_b").glob("sft-*")
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == preemption.EXIT_CODE, stderr[-3000:]
        assert time.time() - sent < 30
        assert f"{sig.name} received" in stderr
        saved = checkpoints.latest_complete(run_dir)
        assert int(saved.name.split("-")[1]) > SAVE      # the step it was in, not the last periodic save
    subprocess.run(_run_cmd(tiny_base, sft_data, overlay, tmp_path / "b"), check=True, capture_output=True)
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= SAVE
    _same_end(metrics, straight)


def test_sigterm_outside_the_training_loop_ends_the_process_at_once(tmp_path):
    """After training (writing outputs) nothing checks the flag: SIGTERM keeps its default."""
    script = ("import os, signal, time\nfrom posttrain.core import preemption\n"
              "preemption.install()\npreemption.finished()\n"
              "os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(30)\nprint('survived')\n")
    res = subprocess.run([bin_path("python"), "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == -signal.SIGTERM and "survived" not in res.stdout


def test_incomplete_and_damaged_checkpoints_are_not_resumed_from(tmp_path):
    run = tmp_path / "run"
    for step in (4, 8):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        checkpoints.mark_complete(run / f"checkpoint-{step}", step)
    (run / "checkpoint-12").mkdir()           # killed mid-save: no marker
    (run / "checkpoint-12" / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    (run / "checkpoint-8" / "trainer_state.json").unlink()       # lost after it was saved
    assert checkpoints.latest_complete(run) == run / "checkpoint-4"
    assert not (run / "checkpoint-12").exists()
    assert checkpoints.damaged(run / "corrupt-checkpoint-8") == "trainer_state.json is missing"


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumed(tmp_path, tiny_base, sft_data,
                                                                               straight):
    """A complete checkpoint whose weights were truncated afterwards (or whose trainer state is
    gone) is not resumed from: it is kept aside for inspection, the run resumes from the one before."""
    overlay = _overlay(tmp_path, "c")
    proc = subprocess.Popen(_run_cmd(tiny_base, sft_data, overlay, tmp_path / "c"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = lambda: list((tmp_path / "ck_c").glob(f"sft-*/checkpoint-{2 * SAVE}/{checkpoints.COMPLETE}"))  # noqa: E731
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_dir,) = (tmp_path / "ck_c").glob("sft-*")
    newest = checkpoints.latest_complete(run_dir)
    weights = newest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    expected = max(int(d.name.split("-")[1]) for d in run_dir.glob("checkpoint-*") if d != newest)

    res = subprocess.run(_run_cmd(tiny_base, sft_data, overlay, tmp_path / "c"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "is damaged" in res.stderr and (run_dir / f"corrupt-{newest.name}").is_dir()
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == expected
    _same_end(metrics, straight)


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_fails(tmp_path, tiny_base, sft_data, straight):
    """ENOSPC from the kernel (the checkpoint's trainer state file is /dev/full) in the middle
    of a save: the run exits non-zero with the error, writes no outputs or manifest, the half-written
    checkpoint is never resumed from and the earlier one is; the rerun ends like a clean run."""
    overlay = _overlay(tmp_path, "d")
    proc = subprocess.Popen(_run_cmd(tiny_base, sft_data, overlay, tmp_path / "d"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = lambda: list((tmp_path / "ck_d").glob(f"sft-*/checkpoint-{SAVE}/{checkpoints.COMPLETE}"))  # noqa: E731
    _wait_for(first, proc)
    (run_dir,) = (tmp_path / "ck_d").glob("sft-*")
    doomed = run_dir / f"checkpoint-{2 * SAVE}"
    doomed.mkdir()
    os.symlink("/dev/full", doomed / "trainer_state.json")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode not in (0, preemption.EXIT_CODE)
    assert "No space left on device" in stderr or "ENOSPC" in stderr or "os error 28" in stderr, stderr[-3000:]
    assert not (tmp_path / "d" / "manifest.json").exists()
    assert not (doomed / checkpoints.COMPLETE).exists()
    assert checkpoints.latest_complete(run_dir) == run_dir / f"checkpoint-{SAVE}"
    assert not doomed.exists()                                # removed as incomplete
    res = subprocess.run(_run_cmd(tiny_base, sft_data, overlay, tmp_path / "d"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == SAVE
    _same_end(metrics, straight)
