"""The code each stage runs, as inputs of its rule: editing a module reruns exactly the stages
that import it, in Snakemake and in DVC alike.

A stage kind names its entry modules; the rest is found by following their `posttrain` imports
(module level and inside functions) through the package. Nothing is listed by hand, so the list
cannot drift from the code.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent          # src/posttrain
SRC = "src/posttrain"                                     # as rules name it, from the repository root

# Each stage kind (Stage.kind) and the modules it starts in.
KINDS = {
    "demo_data": ["stages.demo_data"],
    "base_model": ["stages.base_model"],
    "prepare_data": ["stages.prepare_data"],
    "sft": ["stages.sft"],
    "reward": ["stages.reward"],
    "rl": ["stages.rl"],
    "preference": ["stages.preference"],
    "student_base": ["stages.distill"],
    "distill_samples": ["stages.distill"],
    "distill": ["stages.distill"],
    "evaluate": ["stages.evaluate"],
    "report": ["stages.report"],
    "export_merge": ["stages.export.merge"],
    "export_gptq": ["stages.export.quantize"],
    "export_awq": ["stages.export.quantize"],
    "export_gguf": ["stages.export.gguf"],
    "export_gguf_lora": ["stages.export.gguf"],
    "export_check": ["stages.export.check"],
}
# Files a kind reads that are not Python modules.
EXTRA = {
    "demo_data": [f"{SRC}/demo/tables"],
    "base_model": [f"{SRC}/models/templates"],
    "export_gptq": ["envs/export.txt"],
    "export_awq": ["envs/export.txt"],
}
# Plumbing every stage runs; a change to it is a change to all of them, which its own tests
# cover (a parameter that changes meaning changes the params Snakemake and DVC track).
# Experiment tracking (core.tracking) only reports what a stage makes: editing it reruns nothing.
PLUMBING = ("config", "core.manifest", "core.commands", "core.tracking", "cli", "tools")


def code_inputs(kind: str) -> list[str]:
    """The files, relative to the repository root, of the modules a stage kind runs."""
    if kind not in KINDS:
        raise ValueError(f"stage kind {kind!r} has no entry modules in posttrain.dag.code.KINDS")
    seen: list[str] = []
    todo = list(KINDS[kind])
    while todo:
        module = todo.pop(0)
        if module in seen or _is_plumbing(module):
            continue
        seen.append(module)
        todo += imports_of(module)
    entries = len(KINDS[kind])    # the entry modules first, then the rest sorted: import order is no change
    return [_path(m) for m in seen[:entries]] + sorted(_path(m) for m in seen[entries:]) + EXTRA.get(kind, [])


def digest(kind: str) -> str:
    """One sha256 over the files `code_inputs(kind)` names (paths and contents): what a stage's
    manifest records, so it changes exactly when DVC and Snakemake rerun the stage for its code."""
    root = PACKAGE.parent.parent
    h = hashlib.sha256()
    for name in code_inputs(kind):
        path = root / name
        for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(f.relative_to(root).as_posix().encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


@cache
def imports_of(module: str) -> tuple[str, ...]:
    """The posttrain modules that `module` (dotted, without the `posttrain.` prefix) imports."""
    tree = ast.parse(_file(module).read_text())
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [_strip(a.name) for a in node.names if a.name.startswith("posttrain.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                node.module == "posttrain" or node.module.startswith("posttrain.")):
            parent = _strip(node.module)
            for alias in node.names:
                child = f"{parent}.{alias.name}" if parent else alias.name
                found.append(child if _exists(child) else parent)
    return tuple(m for m in dict.fromkeys(found) if m and _exists(m))


def _strip(name: str) -> str:
    return name.removeprefix("posttrain").removeprefix(".")


def _is_plumbing(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PLUMBING)


def _file(module: str) -> Path:
    base = PACKAGE.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _exists(module: str) -> bool:
    return bool(module) and _file(module).is_file()


def _path(module: str) -> str:
    return f"{SRC}/{_file(module).relative_to(PACKAGE).as_posix()}"
