"""Save and stop when the scheduler asks: a job about to be preempted or to reach its time limit.

Training rules ask SLURM for SIGUSR1 some minutes before their time limit (`resources.
signal_seconds`). The handler only raises a flag; the trainer finishes the step it is in, saves
a checkpoint (marked complete like any other), and the stage exits with `EXIT_CODE` instead of
writing its outputs. Snakemake's retry (or a requeue) then runs the stage again, which resumes
from that checkpoint and ends where an uninterrupted run ends.

SIGTERM (what `kill`, `scancel` and SLURM's own time limit send, the latter `KillWait` seconds
before SIGKILL) is handled the same way while the training loop runs. Outside it nothing would
look at the flag, so there SIGTERM keeps its default action and ends the process; a second
SIGTERM during training does too (the sender is not waiting for a checkpoint).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from transformers import TrainerCallback

log = logging.getLogger(__name__)

# EX_TEMPFAIL: the job did not fail, it was asked to stop; running it again continues it.
EXIT_CODE = 75
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_requested: list[str] = []
_training: list[bool] = []      # non-empty between install() and finished()


class Preempted(SystemExit):
    def __init__(self, step: int):
        super().__init__(EXIT_CODE)
        self.step = step


def install() -> None:
    """Handle the stop signals in this process (a no-op outside the main thread, where Python
    cannot install handlers, e.g. under a test runner's worker thread)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)
    _training[:] = [True]


def finished() -> None:
    """The training loop is over: from here a SIGTERM ends the process as usual (a late SIGUSR1
    is still only noted: the outputs are about to be written)."""
    _training.clear()


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    if signum == signal.SIGTERM and (not _training or "SIGTERM" in _requested):
        log.warning("SIGTERM %s: exiting now", "again" if _training else "outside the training loop")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if not _requested:
        log.warning("%s received: saving a checkpoint at the end of this step, then exiting", name)
    _requested.append(name)


def requested() -> bool:
    return bool(_requested)


def reset() -> None:
    _requested.clear()
    _training.clear()


def exit_if_requested(step: int) -> None:
    """After training returned: if it stopped for a signal, end the process (exit code 75)."""
    if _requested:
        log.warning("stopped at step %d on %s; the checkpoint is saved, a rerun of this stage resumes from it",
                    step, _requested[0])
        raise Preempted(step)


class SaveAndStopOnSignal(TrainerCallback):
    """At the end of the step during which a stop signal arrived: save, then stop training."""

    def on_step_end(self, args, state, control, **kwargs):
        if _agreed(args.device):
            control.should_save = True
            control.should_training_stop = True
        return control


def _agreed(device) -> bool:
    """Whether any process of the run got the signal. Under a multi-process launch the ranks may
    see it at different steps; they must stop at the same one, or the collective checkpoint save
    would wait forever for the ranks still training."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(_requested)
    flag = torch.tensor([1.0 if _requested else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and not _requested:
        _requested.append("another rank's signal")
    return bool(_requested)
