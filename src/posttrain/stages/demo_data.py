"""Demo corpus stage: generate the raw demo datasets the CPU demo trains and evaluates on.

    posttrain demo-data --out results/demo_data [--params params.yaml]

The files deliberately use different public formats (Alpaca, ShareGPT, OpenAI messages, GSM8K
QA, preference pairs, Anthropic-HH transcripts) and include a few dirty rows, so the data stage's
format detection and cleaning report are exercised on every demo run.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from posttrain.config import Params, section
from posttrain.core.commands import params_arg
from posttrain.core.manifest import write_manifest
from posttrain.demo.corpus import DEFAULT_SIZES, write_demo_corpus


def main(params: Params, out: Path) -> dict:
    cfg = params.demo_data
    if out.exists():
        shutil.rmtree(out)
    files = write_demo_corpus(out, seed=cfg.seed, sizes={**DEFAULT_SIZES, **cfg.sizes})
    return write_manifest(out, stage="demo-data", params=section(params, "demo_data"), seed=cfg.seed,
                          extra={"files": sorted(p.name for p in files.values())})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="generate the deterministic demo corpus")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: main(params, a.out))
