"""`posttrain rehearse RECIPE [OVERLAY...]`: a recipe's whole DAG on the CPU, with stand-ins for what a CPU cannot
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
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="[OVERLAY ...] -- SNAKEMAKE_ARGS",
                   help="overlays on the recipe, in order (a variant: recipes/variants/NAME.yaml); after `--`, "
                        "Snakemake's arguments, e.g. -- --profile slurm")
    p.set_defaults(run=_run, params_free=True)


def _run(args: argparse.Namespace) -> int:
    from posttrain.rehearsal.run import rehearse

    # overlays and options may follow the recipe; what follows `--` is Snakemake's
    cut = args.rest.index("--") if "--" in args.rest else len(args.rest)
    p = _options(argparse.ArgumentParser(prog="posttrain rehearse"))
    p.add_argument("overlays", nargs="*", type=Path)
    p.parse_intermixed_args(args.rest[:cut], namespace=args)
    return rehearse([args.recipe, *args.overlays], args.out, Path.cwd(), args.rest[cut + 1:], model=args.model,
                    student=args.student)
