"""`posttrain compare A B [--gate BANDS]` and `posttrain noise-bands RUN RUN ... --out BANDS`."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from posttrain.compare import differences, gate, page, runs

RUN_HELP = "a run folder (a project or its results/), a commit of the project, or a DVC experiment's name"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="two runs side by side: metrics with paired tests, parameters, inputs, curves",
                       description="A and B are run folders (a project or its results/), commits of this project "
                                   "whose artifacts are in its DVC cache (HEAD, HEAD~1, a tag), or DVC experiments. "
                                   "With --gate, exits 1 when a metric of B is worse than A's beyond its noise band.")
    p.add_argument("a", help="the baseline run: " + RUN_HELP)
    p.add_argument("b", help="the run compared with it: " + RUN_HELP)
    p.add_argument("--out", type=Path, default=Path("compare"), help="where compare.md, .html and .json go")
    p.add_argument("--project", type=Path, default=Path("."), help="the git/DVC project commits refer to")
    p.add_argument("--gate", type=Path, metavar="BANDS",
                   help="noise bands (`posttrain noise-bands`): fail when a metric moves beyond its band the wrong way")
    p.set_defaults(run=run, params_free=True)

    n = sub.add_parser("noise-bands", help="each metric's noise band, from seeded repeats of one run",
                       description="Seeded repeats: the same code and data, only the training seeds differ "
                                   "(e.g. `dvc exp run -S sft.seed=1 -S reward.seed=1 -S rl.seed=1 "
                                   "-S ++distill.seed=1 -n seed1`).")
    n.add_argument("runs", nargs="+", help="two or more repeats, each " + RUN_HELP)
    n.add_argument("--out", type=Path, required=True, help="the bands file to write (JSON)")
    n.add_argument("--z", type=float, default=gate.Z, help="band width in standard deviations of a two-run difference")
    n.add_argument("--project", type=Path, default=Path("."), help="the git/DVC project commits refer to")
    n.set_defaults(run=measure, params_free=True)


def run(args: argparse.Namespace) -> int:
    bands = gate.load(args.gate) if args.gate else None
    with tempfile.TemporaryDirectory(prefix="posttrain-compare-") as scratch:
        try:
            a = runs.resolve(args.a, args.project, Path(scratch))
            b = runs.resolve(args.b, args.project, Path(scratch))
            metrics, artifacts = differences.metric_rows(a, b), differences.artifact_rows(a, b)
            result = gate.check(metrics, artifacts, b, bands) if bands else None
            written = page.write(a, b, metrics, artifacts, args.out, result)
        finally:
            runs.remove_worktrees(args.project, Path(scratch))
    print(f"wrote {written['md']} and {written['html']}")
    if result is None:
        return 0
    for line in gate.describe(result):
        print(f"regression: {line}", file=sys.stderr)
    if result["passed"]:
        print(f"gate passed: {result['gated']} metric values within their noise bands ({args.gate})")
        return 0
    print(f"gate FAILED: {len(result['regressions'])} of {result['gated']} metric values beyond their noise bands "
          f"({args.gate})", file=sys.stderr)
    return 1


def measure(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="posttrain-bands-") as scratch:
        try:
            repeats = [runs.resolve(spec, args.project, Path(scratch)) for spec in args.runs]
            bands = gate.measure(repeats, args.z)
        finally:
            runs.remove_worktrees(args.project, Path(scratch))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(bands, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {sum(map(len, bands['bands'].values()))} bands over {len(bands['bands'])} models "
          f"from {len(repeats)} repeats")
    return 0
