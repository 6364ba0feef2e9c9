"""A run to compare: a results folder, a project holding one, or a commit whose artifacts are in
the project's DVC cache (checked out into a scratch git worktree)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.core.manifest import read_run_record

MANIFEST, METRICS, SAMPLES, CURVES = "manifest.json", "metrics.json", "samples.jsonl", "log.csv"


@dataclass
class Run:
    """The artifacts of one run, by their folder relative to `results/` (`sft`, `eval/sft`, ...)."""
    label: str
    results: Path
    manifests: dict[str, dict] = field(default_factory=dict)
    checked_out: str | None = None     # the commit, when DVC checked the run out of its cache

    @classmethod
    def load(cls, label: str, results: Path) -> Run:
        manifests = {str(p.parent.relative_to(results)): json.loads(p.read_text())
                     for p in sorted(results.rglob(MANIFEST)) if ".tmp" not in p.parent.name}
        if not manifests:
            raise FileNotFoundError(f"{results}: no artifact (no {MANIFEST} below it); is it a run's results folder?")
        return cls(label, results, manifests)

    def evaluations(self) -> dict[str, Path]:
        """Model name -> its evaluation folder."""
        return {m.get("stage", "").removeprefix("evaluate:"): self.results / a for a, m in self.manifests.items()
                if m.get("stage", "").startswith("evaluate:") and (self.results / a / METRICS).is_file()}

    def metrics(self, model: str) -> dict:
        record = json.loads((self.evaluations()[model] / METRICS).read_text())
        return {k: v for k, v in record["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def samples(self, model: str) -> list[dict]:
        path = self.evaluations()[model] / SAMPLES
        return [json.loads(line) for line in open(path)] if path.is_file() else []

    def curves(self, artifact: str) -> Path | None:
        path = self.results / artifact / CURVES
        return path if path.is_file() else None

    def commit(self) -> str | None:
        """The commit(s) the artifacts were made at, from their run records (a checkout has none:
        then the commit checked out)."""
        commits = {read_run_record(self.results / a, m).get("git_commit") for a, m in self.manifests.items()}
        return ", ".join(sorted(c[:10] for c in commits - {None})) or (self.checked_out or "")[:10] or None


def resolve(spec: str, project: Path, scratch: Path) -> Run:
    """A run folder (a results folder or a project holding `results/`; relative to the working
    directory, else to `project`), else a commit of `project` whose artifacts DVC checks out of its
    cache into `scratch`."""
    folder = Path(spec) if Path(spec).is_dir() else project / spec
    if folder.is_dir():
        results = folder / "results" if (folder / "results").is_dir() else folder
        return Run.load(spec, results)
    run = Run.load(spec, _checkout(spec, project, scratch))
    run.checked_out = _commit_of(spec, project)
    return run


def _checkout(commit: str, project: Path, scratch: Path) -> Path:
    sha = _commit_of(commit, project)
    tree = scratch / sha[:12]
    if tree.exists():
        _git(project, "worktree", "remove", "--force", str(tree), check=False)
        shutil.rmtree(tree, ignore_errors=True)
    _git(project, "worktree", "add", "--detach", "--force", str(tree), sha)
    if not (tree / "dvc.lock").is_file() and not list(tree.glob("*.dvc")):
        raise FileNotFoundError(f"{commit} records no DVC outputs (no dvc.lock): run `dvc repro` or `dvc commit` "
                                f"and commit dvc.lock, or compare run folders")
    cache = project / ".dvc" / "cache"
    dvc = shutil.which("dvc") or "dvc"
    subprocess.run([dvc, "cache", "dir", "--local", str(cache.resolve())], cwd=tree, capture_output=True, check=True)
    done = subprocess.run([dvc, "checkout", "--quiet"], cwd=tree, capture_output=True, text=True)
    if done.returncode != 0 or not (tree / "results").is_dir():
        raise FileNotFoundError(f"{commit}'s artifacts are not in {cache} ({done.stderr.strip()[-300:]}); "
                                f"`dvc pull` them, or `dvc repro` at that commit")
    return tree / "results"


def _commit_of(spec: str, project: Path) -> str:
    """The commit `spec` names: a git revision, or a DVC experiment's name (`dvc exp run -n NAME`,
    kept under refs/exps/)."""
    rev = _git(project, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", check=False)
    if rev.returncode == 0:
        return rev.stdout.strip()
    refs = _git(project, "for-each-ref", "refs/exps", "--format=%(refname) %(objectname)", check=False).stdout
    found = [sha for ref, sha in (line.split() for line in refs.splitlines())
             if ref.rsplit("/", 1)[-1] == spec and "/exec/" not in ref]
    if len(found) == 1:
        return found[0]
    what = "names several DVC experiments" if found else "is neither a folder, a commit nor a DVC experiment"
    raise FileNotFoundError(f"{spec!r} {what} of {project}")


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check)


def remove_worktrees(project: Path, scratch: Path) -> None:
    """The scratch worktrees of commits, unregistered from the project's git."""
    for tree in scratch.iterdir() if scratch.is_dir() else []:
        _git(project, "worktree", "remove", "--force", str(tree), check=False)
    _git(project, "worktree", "prune", check=False)
