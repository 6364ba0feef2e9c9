"""`posttrain compare A B`: the command."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from posttrain.compare import differences, page, runs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="two runs side by side: metrics with paired tests, parameters, inputs, curves",
                       description="A and B are run folders (a project or its results/) or commits of this "
                                   "project whose artifacts are in its DVC cache (HEAD, HEAD~1, a tag).")
    p.add_argument("a", help="the baseline run: a folder or a commit")
    p.add_argument("b", help="the run compared with it: a folder or a commit")
    p.add_argument("--out", type=Path, default=Path("compare"), help="where compare.md, .html and .json go")
    p.add_argument("--project", type=Path, default=Path("."), help="the git/DVC project commits refer to")
    p.set_defaults(run=run, params_free=True)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="posttrain-compare-") as scratch:
        try:
            a = runs.resolve(args.a, args.project, Path(scratch))
            b = runs.resolve(args.b, args.project, Path(scratch))
            written = page.write(a, b, differences.metric_rows(a, b), differences.artifact_rows(a, b), args.out)
        finally:
            runs.remove_worktrees(args.project, Path(scratch))
    print(f"wrote {written['md']} and {written['html']}")
    return 0
