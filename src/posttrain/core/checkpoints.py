"""Resumable training checkpoints, kept outside the declared outputs.

Snakemake and DVC delete a stage's declared outputs before each attempt, so checkpoints live
under `<checkpoint_dir>/<stage>-<fingerprint>/`. The fingerprint covers the stage's parameters,
its inputs' manifests and its code: a rerun after a kill resumes, a changed run starts fresh. A checkpoint
counts only once it is marked complete (after the trainer has written every file), so a kill
in the middle of a save never leaves a half-written resume point. The marker lists every file
with its size; a checkpoint whose files no longer match (truncated or deleted since) is set aside
as `corrupt-checkpoint-N` and the previous complete one is used.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from posttrain.core.manifest import input_hash, sha256_text

log = logging.getLogger(__name__)

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
        out[f"code:{path.parent.name}/{path.name}"] = path     # stages/sft.py and training/sft.py differ
    return out


def mark_complete(ckpt: Path, step: int) -> None:
    """Written last: the step and every file's size, so a checkpoint damaged later is noticed."""
    files = {str(f.relative_to(ckpt)): f.stat().st_size for f in sorted(ckpt.rglob("*"))
             if f.is_file() and f.name != COMPLETE}
    (ckpt / COMPLETE).write_text(json.dumps({"step": step, "files": files}, indent=1))


def damaged(ckpt: Path) -> str | None:
    """Why a checkpoint marked complete cannot be resumed from (a file missing or of another
    size than when it was saved), or None. Markers of older runs hold only the step."""
    try:
        files = json.loads((ckpt / COMPLETE).read_text()).get("files", {})
    except (ValueError, AttributeError):
        files = {}
    for name, size in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when saved"
    return None


def latest_complete(folder: str | Path) -> Path | None:
    """The highest-step checkpoint marked complete and undamaged; incomplete ones (a save
    interrupted by a kill) are removed, damaged ones set aside."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for d in folder.iterdir():
        m = _CKPT.match(d.name)
        if not m or not d.is_dir():
            continue
        if not (d / COMPLETE).is_file():
            shutil.rmtree(d, ignore_errors=True)
        elif (why := damaged(d)) is not None:
            aside = d.with_name(f"corrupt-{d.name}")
            shutil.rmtree(aside, ignore_errors=True)
            d.rename(aside)
            log.warning("%s is damaged (%s): set aside as %s; resuming from an earlier checkpoint", d, why, aside.name)
        else:
            found.append((int(m.group(1)), d))
    return max(found)[1] if found else None


class MarkComplete(TrainerCallback):
    """Writes the completion marker once the trainer has saved a checkpoint."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                mark_complete(ckpt, state.global_step)
        return control
