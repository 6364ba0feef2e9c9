"""Where an artifact came from: its manifest's inputs, followed back to the raw inputs.

Every artifact folder's manifest names its inputs with their hashes. An input inside another
artifact folder (results/data/eval/test.jsonl) belongs to that folder's manifest; an input no
manifest covers (a dataset file, a hub id) is a raw input and ends the walk. An input whose
hash no longer matches what is on disk is marked: the artifact was made from a different
version of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from posttrain.core.manifest import MANIFEST, input_hash, read_manifest, read_run_record


@dataclass
class Node:
    path: str                  # the input as the manifest names it
    recorded: str | None       # its hash in the manifest that names it (None for the root)
    artifact: str | None       # the artifact folder that owns it, when one does
    stage: str | None = None
    commit: str | None = None
    created: str | None = None
    status: str = "ok"         # ok, changed (hash differs now), missing
    source: str | None = None  # a model or hub id recorded in the params (base models)
    inputs: dict[str, Node] = field(default_factory=dict)
    repeated: bool = False     # already shown above (a DAG, not a tree)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("inputs", "repeated") and v is not None}
        if self.inputs:
            out["inputs"] = {k: v.to_dict() for k, v in self.inputs.items()}
        return out


def owner(path: Path, root: Path) -> Path | None:
    """The artifact folder holding `path` (itself or the nearest parent with a manifest)."""
    for folder in (path, *path.parents):
        if (folder / MANIFEST).is_file():
            return folder
        if folder == root:
            return None
    return None


def trace(artifact: str | Path, root: str | Path = ".") -> Node:
    """The lineage of an artifact folder, paths resolved against `root` (the project)."""
    root = Path(root).resolve()
    folder = Path(artifact)
    if not (root / folder / MANIFEST).is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: not an artifact of this project (or not finished)")
    node = Node(path=str(folder), recorded=None, artifact=str(folder))
    _fill(node, root, seen=set())
    return node


def _fill(node: Node, root: Path, seen: set[str]) -> None:
    if node.artifact in seen:
        node.repeated = True
        return
    seen.add(node.artifact)
    manifest = read_manifest(root / node.artifact)
    run = read_run_record(root / node.artifact, manifest)
    node.stage, node.commit, node.created = manifest.get("stage"), run.get("git_commit"), run.get("created")
    base = manifest.get("params", {}).get("base")
    if isinstance(base, str) and not (root / base).exists():
        node.source = base
    for name, entry in sorted(manifest.get("inputs", {}).items()):
        path = root / entry["path"]
        owned = owner(path, root)
        child = Node(path=entry["path"], recorded=entry.get("sha256"),
                     artifact=str(owned.relative_to(root)) if owned else None)
        if not path.exists():
            child.status = "missing"
        elif entry.get("sha256") and input_hash(path) != entry["sha256"]:
            child.status = "changed"
        node.inputs[name] = child
        if owned is not None:
            _fill(child, root, seen)


def render(node: Node) -> str:
    """The lineage as an indented tree, one input per line."""
    lines = [_label(node)]
    _render(node, "", lines)
    return "\n".join(lines)


def _render(node: Node, prefix: str, lines: list[str]) -> None:
    items = list(node.inputs.items())
    for i, (name, child) in enumerate(items):
        last = i == len(items) - 1
        lines.append(f"{prefix}{'└── ' if last else '├── '}{name}: {_label(child)}")
        if not child.repeated:
            _render(child, prefix + ("    " if last else "│   "), lines)


def _label(node: Node) -> str:
    parts = [node.path]
    if node.artifact and node.artifact != node.path:
        parts.append(f"(in {node.artifact})")
    if node.artifact is None:
        parts.append(f"raw input, sha256 {node.recorded[:12]}" if node.recorded else "raw input")
    elif node.repeated:
        parts.append("(see above)")
    else:
        made = ", ".join(filter(None, [f"stage {node.stage}" if node.stage else None,
                                      f"commit {node.commit[:10]}" if node.commit else "commit unknown",
                                      node.created]))
        parts.append(f"[{made}]")
        if node.source:
            parts.append(f"from {node.source}")
    if node.status != "ok":
        parts.append(f"!! {node.status} since it was used")
    return " ".join(parts)
