"""Publishing a stage's output folder atomically."""

from __future__ import annotations

import shutil
from pathlib import Path


def staging(out: Path) -> Path:
    """Outputs are written beside `out` and moved into place at the end, so a failed export
    leaves no half-written model where a server would look for one."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
