"""Artifact folders as models: which weights and adapter a stage's output stands for."""

from __future__ import annotations

from pathlib import Path

from posttrain.core.manifest import require_manifest


def resolve_model(folder: Path) -> tuple[Path, Path | None, dict]:
    """(weights folder, adapter folder or None, manifest) for an artifact folder: a base model,
    an SFT output with adapter/ (evaluated on its base), or a stage's merged/ (an RL stage's
    adapter sits on another stage's model, so its merged/ is what is evaluated)."""
    manifest = require_manifest(folder, "base-model or a training stage")
    if (folder / "adapter").is_dir() and "base" in manifest.get("inputs", {}):
        base = Path(manifest["inputs"]["base"]["path"])
        require_manifest(base, "base-model")
        return base, folder / "adapter", manifest
    if (folder / "merged").is_dir():
        return folder / "merged", None, manifest
    return folder, None, manifest
