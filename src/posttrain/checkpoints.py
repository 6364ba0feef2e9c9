"""Resumable training checkpoints, kept outside the declared outputs.

Snakemake and DVC delete a stage's declared outputs before each attempt, so checkpoints live
under `<checkpoint_dir>/<stage>-<fingerprint>/`. The fingerprint covers the stage's parameters,
its inputs' manifests and its code: a rerun after a kill resumes, a changed run starts fresh. A checkpoint
counts only once it is marked complete (after the trainer has written every file), so a kill
in the middle of a save never leaves a half-written resume point.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from posttrain.manifest import input_hash, sha256_text

COMPLETE = "COMPLETE"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def run_dir(root: str | Path, stage: str, params: dict, inputs: dict[str, str | Path]) -> Path:
    key = json.dumps({"params": params, "inputs": {k: input_hash(v) for k, v in sorted(inputs.items())}},
                     sort_keys=True)
    return Path(root) / f"{stage}-{sha256_text(key)[:12]}"


def code_inputs(*modules) -> dict[str, Path]:
    """The files of the code that trains (a module or a path): a code change starts fresh
    instead of resuming a checkpoint made by different code."""
    out = {}
    for m in (*modules, __file__):
        path = Path(m if isinstance(m, (str, Path)) else m.__file__)
        out[f"code:{path.name}"] = path
    return out


def latest_complete(folder: str | Path) -> Path | None:
    """The highest-step checkpoint marked complete; incomplete ones are removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for d in folder.iterdir():
        m = _CKPT.match(d.name)
        if not m or not d.is_dir():
            continue
        if (d / COMPLETE).is_file():
            found.append((int(m.group(1)), d))
        else:
            shutil.rmtree(d, ignore_errors=True)  # a save interrupted by a kill
    return max(found)[1] if found else None


class MarkComplete(TrainerCallback):
    """Writes the completion marker once the trainer has saved a checkpoint."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                (ckpt / COMPLETE).write_text(str(state.global_step))
        return control
