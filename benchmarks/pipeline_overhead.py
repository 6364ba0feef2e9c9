"""What the workflow tools cost on a finished run, measured side by side in one run.

    .venv/bin/python benchmarks/pipeline_overhead.py [--project DIR] [--repeat 3] [--configfile OVERLAY ...]

On a project whose DAG has run (`make demo`; `make demo-quick` with `--configfile
recipes/demo-quick.yaml`, the overlays the run used), prints:
  1. the median wall time of `snakemake -n` and of `dvc status`, each against the 3 s target;
  2. what an eval-only change costs: with `evaluate.perplexity_rows` changed in the last of
     params.yaml and the overlays that sets it (put back afterwards), the jobs Snakemake would
     run, split into training stages (target 0) and the rest;
  3. the stage table from Snakemake's `benchmark:` files (logs/benchmarks/), see stage_costs.py.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_costs import stage_table  # noqa: E402

TRAINING = re.compile(r"^(sft|reward_\w+|rl_\w+|distill|distill_baseline)$")
TARGET_S = 3.0


def timed(cmd: list[str], cwd: Path, repeat: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        out = res.stdout + res.stderr
    return statistics.median(times), out


def planned_jobs(dry_run: str) -> dict[str, int]:
    """{rule: count} from the job table a Snakemake dry run prints."""
    table = dry_run.split("Job stats:", 1)[-1]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M) if rule not in ("all", "total")}


def setting_file(files: list[Path]) -> Path:
    """The last of params.yaml and its overlays that sets evaluate.perplexity_rows (params.yaml
    when none does): the value the run's stages read."""
    for f in reversed(files[1:]):
        if "perplexity_rows" in ((yaml.safe_load(f.read_text()) or {}).get("evaluate") or {}):
            return f
    return files[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=Path("."), help="a project whose DAG has run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--configfile", nargs="+", default=[], metavar="OVERLAY",
                    help="the overlays the run used (snakemake --configfile), relative to the project")
    args = ap.parse_args()
    project = args.project.resolve()
    bin_dir = project / ".venv" / "bin"
    snakemake = str(bin_dir / "snakemake") if (bin_dir / "snakemake").exists() else "snakemake"
    dvc = str(bin_dir / "dvc") if (bin_dir / "dvc").exists() else "dvc"
    dry_run = [snakemake, "-n", *(["--configfile", *args.configfile] if args.configfile else [])]

    dry, dry_out = timed(dry_run, project, args.repeat)
    status, _ = timed([dvc, "status"], project, args.repeat)
    pending = planned_jobs(dry_out) if "Nothing to be done" not in dry_out else {}

    # The edit a user makes: the file that sets the key (restored afterwards), params.yaml unless
    # an overlay of the run sets it too. A new overlay would not do: its path joins every stage's
    # command, and a changed command reruns every stage.
    params_file = setting_file([project / "params.yaml", *(project / c for c in args.configfile)])
    original = params_file.read_text()
    rows = yaml.safe_load(original).get("evaluate", {}).get("perplexity_rows", 40)
    edited = re.sub(r"^(\s+perplexity_rows:\s*)\d+", lambda m: f"{m.group(1)}{rows + 1}", original, count=1,
                    flags=re.M)
    if edited == original:
        raise SystemExit(f"{params_file.name} has no evaluate.perplexity_rows line to change")
    try:
        params_file.write_text(edited)
        changed = subprocess.run(dry_run, cwd=project, capture_output=True, text=True)
    finally:
        params_file.write_text(original)
    jobs = planned_jobs(changed.stdout + changed.stderr)
    training = {r: n for r, n in jobs.items() if TRAINING.match(r)}

    print(f"project: {project}")
    print(f"snakemake -n : {dry:6.2f} s  (target {TARGET_S} s, ratio {dry / TARGET_S:.2f})"
          + (f"; it would run {sum(pending.values())} jobs: the run is not up to date" if pending else ""))
    print(f"dvc status   : {status:6.2f} s  (target {TARGET_S} s, ratio {status / TARGET_S:.2f})")
    print(f"evaluate.perplexity_rows {rows} -> {rows + 1} ({params_file.name}): {sum(jobs.values())} jobs would run; "
          f"training stages {sum(training.values())} (target 0){': ' + ', '.join(training) if training else ''}; "
          f"others: {', '.join(sorted(set(jobs) - set(training)))}")
    table = stage_table(project / "logs" / "benchmarks")
    if table:
        print("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
