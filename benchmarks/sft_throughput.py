"""SFT throughput, measured side by side in one run.

    .venv/bin/python benchmarks/sft_throughput.py                       # tiny random model (seconds)
    .venv/bin/python benchmarks/sft_throughput.py --base results/base --data results/data/sft --steps 6

Prints:
  1. the SFT stage's training tokens/s divided by a bare PyTorch loop's (same model, LoRA config,
     batches and optimizer), target >= 0.95: what the trainer machinery costs;
  2. the share of real (non-padding) tokens among processed tokens with the stage's packing,
     against TRL's default padded batches, target >= 0.95.
Both loops are timed over the same steps, from the end of the first step (warm-up excluded) to
the end of the last, so data loading, the optimizer and logging all count.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]


class StepClock(TrainerCallback):
    def __init__(self):
        self.ends: list[float] = []
        self.tokens: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        self.tokens.append(state.num_input_tokens_seen)


def bench_params(overrides: dict, tmp: Path):
    """params.yaml with `overrides` on top (also dpo_step.py's)."""
    from posttrain.config import load_params

    path = tmp / "bench.yaml"
    path.write_text(json.dumps(overrides))
    return load_params([ROOT / "params.yaml", path])


def _tiny_inputs(tmp: Path) -> tuple[Path, Path]:
    """A tiny random Llama and the demo corpus's SFT split, made by the real stages."""
    from posttrain.demo.corpus import write_demo_corpus
    from posttrain.stages import base_model, prepare_data

    params = bench_params({"model": {"base": "tiny:llama"}}, tmp)
    base_model.main(params, tmp / "base")
    files = write_demo_corpus(tmp / "demo")
    inputs = [str(files[n]) for n in ("sft_alpaca", "sft_sharegpt", "sft_messages", "arithmetic_train")]
    params = bench_params({"data": {"max_reject_ratio": 0.2}}, tmp)
    prepare_data.main(params, "sft", inputs, tmp / "sft", tokenizer_dir=tmp / "base")
    return tmp / "base", tmp / "sft"


def _trainer(base: Path, data: Path, tmp: Path, steps: int, packing: bool, name: str, precision: str | None = None):
    """The SFT stage's trainer; `precision` overrides sft.precision (auto, fp32, bf16)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from posttrain.training import sft
    from posttrain.training import trainers as training

    params = bench_params({"sft": {"max_steps": steps, "packing": packing, "eval_steps": 10**6, "save_steps": 10**6,
                              "logging_steps": 10**6, "checkpoint_dir": str(tmp / "ckpt"),
                              **({"precision": precision} if precision else {})}}, tmp)
    set_seed(params.sft.seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=training.resolve_precision(params.sft.precision)["dtype"])
    tok = AutoTokenizer.from_pretrained(base)
    return sft._build_trainer(model, tok, [data / "train.jsonl"], data / "val.jsonl", tmp / name, params.sft,
                              training.resolve_precision(params.sft.precision), None, "sft"), params.sft


def stage_tokens_per_second(base, data, tmp, steps, precision: str | None = None) -> tuple[float, list[dict]]:
    trainer, _ = _trainer(base, data, tmp, steps, packing=True, name=f"stage-{precision}", precision=precision)
    batches = [{k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()}
               for _, b in zip(range(steps), trainer.get_train_dataloader())]
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    return (clock.tokens[-1] - clock.tokens[0]) / (clock.ends[-1] - clock.ends[0]), batches


def bare_tokens_per_second(base, data, tmp, steps, batches) -> float:
    """The same LoRA model, batches, AdamW settings and precision in a plain loop."""
    from posttrain.training import trainers as training

    trainer, cfg = _trainer(base, data, tmp, steps, packing=True, name="bare")
    precision = training.resolve_precision(cfg.precision)
    model = trainer.model  # the identical PEFT-wrapped model, before any trainer step
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                            weight_decay=cfg.weight_decay)
    ends, tokens, seen = [], [], 0
    for batch in batches:
        with training.autocast(precision):
            loss = model(**batch).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += _real_tokens(batch)
        ends.append(time.perf_counter())
        tokens.append(seen)
    return (tokens[-1] - tokens[0]) / (ends[-1] - ends[0])


def _real_tokens(batch: dict) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())  # padding-free: every position is a real token


def real_token_share(base, data, tmp, packing: bool, n_batches: int = 50) -> float:
    trainer, _ = _trainer(base, data, tmp, 1, packing=packing, name=f"share{packing}")
    real = total = 0
    for _, batch in zip(range(n_batches), trainer.get_train_dataloader()):
        real += _real_tokens(batch)
        total += batch["input_ids"].numel()
    return real / total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, help="base model folder (default: a tiny random Llama)")
    ap.add_argument("--data", type=Path, help="prepared SFT folder (default: the demo corpus)")
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        base, data = (args.base, args.data) if args.base and args.data else _tiny_inputs(tmp)
        stage, batches = stage_tokens_per_second(base, data, tmp, args.steps)
        bare = bare_tokens_per_second(base, data, tmp, args.steps, batches)
        packed = real_token_share(base, data, tmp, packing=True)
        padded = real_token_share(base, data, tmp, packing=False)
    print(f"model: {base}  data: {data}  steps: {args.steps}  threads: {torch.get_num_threads()}")
    print(f"SFT stage  tokens/s: {stage:10.1f}")
    print(f"bare loop  tokens/s: {bare:10.1f}")
    print(f"stage / bare:        {stage / bare:10.3f}   (target >= 0.95)")
    print(f"real-token share, packing (bfd, padding-free): {packed:.3f}   (target >= 0.95)")
    print(f"real-token share, TRL default padding:         {padded:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
