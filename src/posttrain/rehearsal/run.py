"""`posttrain rehearse RECIPE [OVERLAY...]`: the recipe's own DAG, through Snakemake, on the CPU.

The run happens in a work tree of its own (`results/rehearsal/<recipe>/work`): links to the
pipeline's definition (Snakefile, rules, params.yaml, recipes, configs, scripts, profiles, the
package) and its own `results/`, so a rehearsal never touches the project's results. Snakemake
gets the recipe and its overlays (a variant such as recipes/variants/qwen3-30b-a3b-dpo.yaml) as
the user would pass them, then the stand-ins overlay (`rehearsal.yaml`)."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from posttrain.config import load_params
from posttrain.dag.checks import check_recipe
from posttrain.rehearsal import launch, preflight, standins

log = logging.getLogger("posttrain")

# What the work tree links to: the pipeline's definition, as a cluster run would see it.
LINKED = ("Snakefile", "rules", "params.yaml", "recipes", "configs", "scripts", "profiles", "slurm", "envs", "src",
          ".venv-export")
OVERLAY = "rehearsal.yaml"


def rehearse(recipes: Path | list[Path], out: Path | None, root: Path, snakemake_args: list[str],
             model: str | None = None, student: str | None = None) -> int:
    """Rehearse params.yaml with `recipes` overlaid in order (params.yaml alone: the demo)."""
    recipes = [Path(r) for r in (recipes if isinstance(recipes, list) else [recipes]) if Path(r).name != "params.yaml"]
    params = load_params([root / "params.yaml", *recipes])
    check_recipe(params, root)                       # what `snakemake -n` would refuse, first
    out = out or root / "results" / "rehearsal" / ("+".join(r.stem for r in recipes) or "params")
    work = work_tree(out / "work", root)
    files = ["params.yaml", *(_place(r, root, work) for r in recipes)]
    name = " + ".join(files[1:]) or files[0]
    extra, found = standins.overlay(params, root, model=model, student=student)
    (work / OVERLAY).write_text(f"# Stand-ins of a rehearsal of {name} (posttrain rehearse)\n"
                                + yaml.safe_dump(extra, sort_keys=False))
    for s in found:
        log.info("stand-in  %-28s %s -> %s", s.key, s.recipe, s.rehearsal)
    env = preflight.environments(params, root)
    missing = [f"{e.stage}: {e.package} ({e.where})" for e in env if e.status == "missing"]
    clashes = launch.problems(params, root)      # what the launchers would refuse on GPUs
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--configfile", *files[1:], OVERLAY, *snakemake_args]
    if not missing and not clashes:
        log.info("rehearsing %s in %s: %s", name, work, " ".join(cmd[1:]))
        start = time.time()
        with (out / "snakemake.log").open("w") as sink:
            code = subprocess.run(cmd, cwd=work, stdout=sink, stderr=subprocess.STDOUT).returncode
        elapsed = time.time() - start
    else:
        code, elapsed = 1, 0.0
    report = preflight.write(params, files, work, out, found, env, clashes, snakemake_code=code, elapsed=elapsed)
    if missing or clashes:
        print("posttrain rehearse: stopped before running anything:\n  " + "\n  ".join(
            [f"{m} does not import" for m in missing] + clashes), file=sys.stderr)
        return 1
    if code != 0:
        print("\n".join(failures((out / "snakemake.log").read_text())), file=sys.stderr)
        print(f"posttrain rehearse: the DAG failed (exit {code}); log: {out / 'snakemake.log'}; "
              f"report: {report}", file=sys.stderr)
        return 1
    problems = preflight.problems(work, params, files)
    if problems:
        print("posttrain rehearse: the rehearsal ran but:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"rehearsal of {name} passed in {elapsed / 60:.1f} min: every stage ran; pre-flight report {report}")
    return 0


def failures(log_text: str) -> list[str]:
    """The failed rules and the errors their commands printed (each once), from Snakemake's log."""
    lines = log_text.splitlines()
    found = [line for line in lines if re.match(r"(Error in rule \S+:|posttrain [\w-]+: (error: )?)", line)]
    return list(dict.fromkeys(found)) or lines[-40:]


def _place(recipe: Path, root: Path, work: Path) -> str:
    """The recipe's path as Snakemake will see it in the work tree: where it is in the project
    (recipes/ is linked), or a copy beside the overlay for a recipe kept elsewhere."""
    try:
        inside = recipe.resolve().relative_to(root.resolve())
        if (work / inside).exists():
            return str(inside)
    except ValueError:
        pass
    shutil.copy(recipe, work / recipe.name)
    return recipe.name


def work_tree(work: Path, root: Path) -> Path:
    """The rehearsal's own working directory; its results/ survive a rerun (Snakemake resumes),
    the links are made afresh."""
    work.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = work / name
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        if (root / name).exists():
            link.symlink_to((root / name).resolve())
    return work
