"""`posttrain rehearse RECIPE`: a recipe's whole DAG on the CPU, with stand-ins for what a CPU cannot
hold (standins), and the pre-flight report of what it will cost on the cluster (preflight, estimates)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--out", type=Path, help="where the work tree and the report go (default results/rehearsal/NAME)")
    p.add_argument("--model", help="the stand-in for model.base (default: tiny:ARCH of the recipe's architecture)")
    p.add_argument("--student", help="the stand-in for a hub distill.student.model (default: tiny:ARCH)")
    return p


def register(sub: argparse._SubParsersAction) -> None:
    p = _options(sub.add_parser(
        "rehearse", help="run a recipe's whole DAG on the CPU (tiny model, fixture data, 2 processes per multi-GPU "
        "stage) and write its pre-flight report"))
    p.add_argument("recipe", type=Path, help="a recipe overlay (recipes/NAME.yaml) or params.yaml itself")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="-- SNAKEMAKE_ARGS",
                   help="passed on to Snakemake after `--`, e.g. -- --profile slurm")
    p.set_defaults(run=_run, params_free=True)


def _run(args: argparse.Namespace) -> int:
    from posttrain.rehearsal.run import rehearse

    # options may follow the recipe; what follows `--` is Snakemake's
    cut = args.rest.index("--") if "--" in args.rest else len(args.rest)
    _options(argparse.ArgumentParser(prog="posttrain rehearse")).parse_args(args.rest[:cut], namespace=args)
    return rehearse(args.recipe, args.out, Path.cwd(), args.rest[cut + 1:], model=args.model, student=args.student)
