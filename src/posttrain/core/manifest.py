"""manifest.json: what made an artifact folder, written last and atomically.

A folder without a manifest is an interrupted or foreign output; downstream stages refuse it
(`require_manifest`), so a half-written model can never be trained on or evaluated.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from posttrain.core import tracking

MANIFEST = "manifest.json"
# Beside each artifact: the wall-clock facts of the run that made it (commit, time, how long, how
# fast). They differ on every rerun of the same inputs, so they stay out of manifest.json and
# metrics.json, which repeat byte for byte, and .dvcignore keeps them out of DVC's hashes.
RUN_RECORD = "run.json"
WALL_CLOCK_KEYS = ("tokens_per_second", "train_runtime_s", "quantize_seconds", "write_seconds", "peak_memory_gb")
# Libraries whose versions change results; recorded in every manifest.
TRACKED_LIBRARIES = (
    "posttrain", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers",
    "safetensors", "numpy", "datasketch", "gguf", "lm-eval", "snakemake", "dvc", "gptqmodel", "optimum",
)


class MissingManifestError(FileNotFoundError):
    pass


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(cwd: str | Path = ".") -> str | None:
    """HEAD's sha, suffixed with `-dirty` when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def input_hash(path: str | Path) -> str:
    """Content hash of an input. An artifact folder is identified by its manifest (which
    already hashes what made it), so multi-GB model folders are not re-read."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if (path / MANIFEST).is_file():
        return "manifest:" + sha256_file(path / MANIFEST)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def portable(value: Any, root: str | Path | None = None) -> Any:
    """`value` with every absolute path under `root` (the working directory) made relative to it,
    in strings nested anywhere: a record that names where it ran would differ between two clones."""
    prefix = str(Path(root or Path.cwd()).resolve()) + os.sep
    if isinstance(value, str):
        return value.replace(prefix, "")
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, root) for v in value]
    return value


def write_run_record(out_dir: str | Path, **facts) -> None:
    """Add `facts` to the artifact's run record (run.json)."""
    path = Path(out_dir) / RUN_RECORD
    write_json(path, {**(json.loads(path.read_text()) if path.is_file() else {}), **facts})


def read_run_record(folder: str | Path, manifest: dict | None = None) -> dict:
    """The run record of an artifact folder ({} when absent: a DVC checkout carries none). With its
    `manifest`, the commit and time of an artifact made before run.json, whose manifest held them."""
    path = Path(folder) / RUN_RECORD
    record = json.loads(path.read_text()) if path.is_file() else {}
    old = {k: manifest[k] for k in ("git_commit", "created") if k in (manifest or {})}
    return {**old, **record}


def write_metrics(out_dir: str | Path, metrics: dict) -> dict:
    """metrics.json without its wall-clock keys, which go to the run record; returns what it wrote."""
    timed = {k: metrics[k] for k in WALL_CLOCK_KEYS if k in metrics}
    kept = {k: v for k, v in metrics.items() if k not in timed}
    write_json(Path(out_dir) / "metrics.json", kept)
    if timed:
        write_run_record(out_dir, **timed)
    return kept


_stage_code: str | None = None


def record_code(digest: str | None) -> None:
    """The digest of the code the running stage imports (posttrain.dag.code), for its manifest: a
    code change that changes an artifact changes its manifest, and so what downstream records."""
    global _stage_code
    _stage_code = digest


def write_manifest(out_dir: str | Path, *, stage: str, params: dict, seed: int | None,
                   inputs: dict[str, str | Path] | None = None, chat_template: str | None = None,
                   extra: dict | None = None) -> dict:
    """Record how `out_dir` was made: what repeats from run to run (inputs, parameters, code,
    versions), so a rerun of the same inputs writes the same manifest; the commit and the time go to
    the run record. Call it last: its presence marks the folder complete."""
    out_dir = Path(out_dir)
    manifest = {
        "stage": stage,
        "params": params,
        "seed": seed,
        "inputs": {name: {"path": str(p), "sha256": input_hash(p)} for name, p in (inputs or {}).items()},
        "code_sha256": _stage_code,
        "versions": library_versions(),
        "chat_template_sha256": sha256_text(chat_template) if chat_template else None,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "launch": launch_record(),
    }
    if extra:
        manifest.update(extra)
    write_run_record(out_dir, git_commit=git_commit(), created=datetime.now(UTC).isoformat(timespec="seconds"))
    write_json(out_dir / MANIFEST, manifest)
    tracking.finish(manifest)
    return manifest


def launch_record() -> dict:
    """How the writing process ran: the processes of its job, the process group's backend (nccl on
    GPUs, gloo on CPUs), and the launcher config's distributed mode (`accelerate launch` passes it
    in the environment). The two differ on a CPU, where accelerate runs an FSDP or DeepSpeed config
    as plain data parallel over gloo: a rehearsal reports both."""
    env = os.environ
    launcher = ("fsdp" if env.get("ACCELERATE_USE_FSDP", "").lower() == "true" else
                "deepspeed" if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" else None)
    record = {"world_size": int(env.get("WORLD_SIZE", "1")), "launcher": launcher, "backend": None}
    if launcher == "fsdp":
        record["fsdp_version"] = int(env.get("FSDP_VERSION", "1"))
    dist = sys.modules.get("torch.distributed")        # never imports torch into a torch-free stage
    if dist is not None and dist.is_available() and dist.is_initialized():
        record.update(world_size=dist.get_world_size(), backend=str(dist.get_backend()))
    return record


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())


def require_manifest(folder: str | Path, producer: str) -> dict:
    """Refuse an input folder that a complete run of `producer` did not write."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise MissingManifestError(
            f"{folder} has no {MANIFEST}: it is not the output of a complete `posttrain {producer}` run "
            f"(interrupted, or made by hand). Rerun that stage, e.g. `snakemake --cores 2 {folder}`.")
    return read_manifest(folder)
