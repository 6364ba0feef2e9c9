"""Export: serving artifacts for one model of the DAG, and what quantization costs.

    posttrain export-merge --model results/sft --out results/export/sft/merged
    .venv-export/bin/posttrain export-gptq --model results/export/sft/merged \\
        --calibration results/data/sft --out results/export/sft/gptq
    posttrain export-check --merged results/export/sft/merged --quantized gptq=results/export/sft/gptq \\
        --eval results/eval/sft --quantized-eval gptq=results/eval/sft_gptq --out results/export/sft/check

- export-merge: the LoRA adapters folded into the weights (a MoE's expert adapters included:
  PEFT merges every module it adapted), cast to `export.dtype`, saved as safetensors with the
  tokenizer, chat template, a sampling generation_config.json, a model card with the
  `vllm serve` line, and a check that the reloaded export computes the same logits.
- export-gptq: 4-bit GPTQ with GPTQModel, calibrated on SFT rows rendered with the chat template
  (what the served model will see). It runs from the export environment (.venv-export,
  envs/export.txt): GPTQModel's pins conflict with Snakemake's. The folder loads in transformers
  (with gptqmodel and optimum installed) and in vLLM unchanged.
- export-check: size ratios and the evaluation deltas of each quantized model against the
  unquantized one (the same eval suite, results/eval/), as a DVC metric.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.core.commands import pairs_arg, params_arg
from posttrain.export.calibration import calibration_rows, check_awq_widths, check_group_size
from posttrain.export.cards import gguf_file_name, serve_command
from posttrain.models.sources import weights_mb
from posttrain.stages.export.check import check
from posttrain.stages.export.common import PROBE, export_params
from posttrain.stages.export.gguf import CHECK_TEXT, gguf, gguf_lora
from posttrain.stages.export.merge import merge
from posttrain.stages.export.quantize import awq, gptq

__all__ = ["CHECK_TEXT", "PROBE", "awq", "calibration_rows", "check", "check_awq_widths", "check_group_size", "gguf",
           "gguf_file_name", "gguf_lora", "gptq", "merge", "serve_command", "weights_mb"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-merge", help="merged weights for serving (adapters folded in), with a model card")
    p.add_argument("--model", type=Path, required=True, help="an artifact folder: results/sft, results/rl/NAME, ...")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: merge(params, a.model, a.out))

    for method, quantize in (("gptq", gptq), ("awq", awq)):
        p = sub.add_parser(f"export-{method}", help=f"4-bit {method.upper()} of a merged export (GPTQModel; run from "
                                                    ".venv-export)")
        p.add_argument("--model", type=Path, required=True, help="an export-merge output")
        p.add_argument("--calibration", type=Path, required=True, help="prepared SFT data (results/data/sft)")
        p.add_argument("--out", type=Path, required=True)
        params_arg(p)
        p.set_defaults(run=lambda params, a, quantize=quantize: quantize(params, a.model, a.calibration, a.out))

    p = sub.add_parser("export-gguf", help="a GGUF file of a merged export (llama.cpp, Ollama, vLLM)")
    p.add_argument("--model", type=Path, required=True, help="an export-merge output")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: gguf(params, a.model, a.out))

    p = sub.add_parser("export-gguf-lora", help="a 4-bit GGUF of a model's base and its LoRA adapter as a GGUF "
                                                "adapter (llama.cpp --lora)")
    p.add_argument("--model", type=Path, required=True, help="a stage output with adapter/: results/sft, ...")
    p.add_argument("--merged", type=Path, required=True, help="its export-merge output (the check's reference)")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: gguf_lora(params, a.model, a.merged, a.out))

    p = sub.add_parser("export-check", help="size ratios and eval deltas of quantized exports against the "
                                            "unquantized model")
    p.add_argument("--merged", type=Path, required=True, help="the export-merge output")
    p.add_argument("--quantized", action="append", default=[], metavar="FORMAT=DIR", required=True,
                   help="a quantized export; repeatable")
    p.add_argument("--eval", type=Path, required=True, help="the unquantized model's evaluation")
    p.add_argument("--quantized-eval", action="append", default=[], metavar="FORMAT=DIR", required=True,
                   help="a quantized export's evaluation; repeatable")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: check(a.merged, pairs_arg(a.quantized, "--quantized"), a.eval,
                                               pairs_arg(a.quantized_eval, "--quantized-eval"), a.out,
                                               export_params(params)))
