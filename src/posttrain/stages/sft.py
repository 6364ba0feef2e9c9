"""SFT stage: supervised fine-tuning with TRL's SFTTrainer and PEFT.

    posttrain sft --base results/base --data results/data/sft --out results/sft [--params params.yaml ...]

LoRA (default), QLoRA (4-bit base, CUDA only) or full fine-tuning; assistant-only loss with the
base stage's chat template; packing; MoE-aware adapters (attention + fused experts, router frozen,
router aux loss). Checkpoints live outside the declared outputs and a rerun resumes from the last
complete one. Writes adapter/ (LoRA), merged/, metrics.json, log.csv, curves.png, README.md and
manifest.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.config import Params, section
from posttrain.core.commands import params_arg
from posttrain.training import sft


def main(params: Params, base_dir: Path, data_dir: Path, out: Path) -> dict:
    return sft.train(params.sft, "sft", section(params, "sft"), base_dir, data_dir, out)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning (LoRA, QLoRA or full) with TRL")
    p.add_argument("--base", type=Path, required=True, help="base model folder (results/base)")
    p.add_argument("--data", type=Path, required=True, help="prepared SFT data (results/data/sft)")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: main(params, a.base, a.data, a.out))
