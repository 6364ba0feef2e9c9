"""The package's shape: the one import rule, small modules, the command registry, the README's
DAG diagram and the code each stage's rule tracks."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT
from posttrain import cli, dag
from posttrain.config import load_params
from posttrain.dag import code

PACKAGE = ROOT / "src" / "posttrain"
DOMAIN = {"data", "demo", "models", "training", "verifiers", "rl", "inference", "export", "stats"}
# Modules longer than this are split; data lives in data files, not in modules.
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str:
    top = module.split(".")[0]
    if top == "stages" and "." in module:
        return "stage:" + module.split(".")[1]
    if top in DOMAIN:
        return "domain"
    return {"core": "core", "config": "config", "dag": "dag", "cli": "cli", "tools": "cli"}.get(top, top)


def _runtime_imports(path: Path) -> list[str]:
    """posttrain modules imported outside `if TYPE_CHECKING:` blocks (annotations cost nothing)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend([f"{node.module}.{a.name}" for a in node.names] if node.module == "posttrain"
                         else [node.module])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return [m.removeprefix("posttrain.") for m in found if m.startswith("posttrain.")]


def _allowed(importer: str, imported: str) -> bool:
    """Stages use domain packages, domain packages use core, config may check names against the
    domain's registries, the DAG reads config (and what names mean); no stage imports another stage."""
    if importer == "cli" or importer == imported:
        return True
    return imported in {
        "core": {"core"},
        "domain": {"core", "domain"},
        "config": {"core", "domain", "config"},
        "dag": {"core", "domain", "config", "dag"},
        "rehearsal": {"core", "domain", "config", "dag"},     # runs a recipe's whole DAG, like the tools
    }.get(importer, {"core", "domain", "config"})


def test_import_rule_holds_for_every_module():
    broken = [f"{module} imports {imported}" for module, path in _modules().items()
              for imported in _runtime_imports(path)
              if not _allowed(_layer(module), _layer(imported))]
    assert not broken, "imports that break the layering (docs/architecture.md):\n" + "\n".join(broken)


def test_the_import_rule_catches_a_stage_importing_another():
    assert not _allowed("stage:distill", "stage:sft")
    assert not _allowed("domain", "stage:sft") and not _allowed("core", "domain")
    assert _allowed("stage:export", "stage:export") and _allowed("stage:sft", "domain")


def test_no_module_is_longer_than_the_limit():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (at most {MAX_LINES} lines each): {long}"


def test_every_command_is_registered_by_the_module_the_registry_names():
    parser = cli.build_parser()
    registered = set(parser._subparsers._group_actions[0].choices)
    assert registered == set(cli.COMMANDS)
    for command, module in cli.COMMANDS.items():
        alone = cli.build_parser(command)._subparsers._group_actions[0].choices
        assert command in alone, f"{command} is not registered by posttrain.{module}"


def test_the_readme_diagram_is_the_stage_table():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- dag:begin -->\n```mermaid\n(.*?)```\n<!-- dag:end -->", readme, re.S)
    assert block, "README.md has no ```mermaid block between <!-- dag:begin --> and <!-- dag:end -->"
    files = [str(ROOT / "params.yaml")]
    assert block.group(1) == dag.mermaid(dag.stages(load_params(files), files)), \
        "README.md's DAG diagram is stale: paste the output of `posttrain dag --mermaid`"


@pytest.mark.parametrize("recipe", [[], ["recipes/demo-quick.yaml"], ["recipes/qwen3-30b-a3b.yaml"]])
def test_the_stage_table_is_in_dependency_order(recipe):
    """Each stage comes after the stages whose outputs it reads (benchmarks/stage_costs.py walks
    the table in order to find the critical path)."""
    files = [str(ROOT / "params.yaml"), *(str(ROOT / r) for r in recipe)]
    made = set()
    for s in dag.stages(load_params(files), files):
        producers = {d for d in s.deps if any(d == o or d.startswith(o + "/") for o in made)}
        later = [d for d in s.deps if d.startswith("results/") and d not in producers]
        assert not later, f"{s.name} reads {later} before the stage that writes it"
        made.update(s.outs)


@pytest.mark.parametrize("kind", sorted(code.KINDS))
def test_code_inputs_are_the_modules_a_stage_imports(kind):
    paths = code.code_inputs(kind)
    assert all((ROOT / p).exists() for p in paths), paths
    assert paths[0].startswith("src/posttrain/stages/")
    assert not any("/config/" in p or p.endswith("/cli.py") for p in paths)   # plumbing, tracked as params
    own_stage = paths[0].split("/")[3].removesuffix(".py")
    assert all(p.split("/")[3].removesuffix(".py") == own_stage for p in paths if p.startswith("src/posttrain/stages/"))


def test_code_inputs_follow_imports_inside_functions():
    assert "src/posttrain/training/sft.py" in code.code_inputs("distill")       # imported inside student()
    assert "src/posttrain/rl/ppo.py" in code.code_inputs("rl")                  # imported when a stage is PPO
    assert "src/posttrain/rl/ppo.py" not in code.code_inputs("sft")
