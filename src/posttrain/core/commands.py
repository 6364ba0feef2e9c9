"""Helpers for the `posttrain` subcommands that every stage module registers (posttrain.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path


def params_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", action="append", metavar="FILE",
                   help="parameter file; repeat to overlay recipes (default: params.yaml)")


def pairs_arg(values: list[str], flag: str) -> dict[str, Path]:
    """`NAME=DIR` arguments as a mapping."""
    out = {}
    for v in values:
        key, sep, path = v.partition("=")
        if not sep or not key or not path:
            raise ValueError(f"{flag} {v!r}: expected NAME=DIR")
        out[key] = Path(path)
    return out
