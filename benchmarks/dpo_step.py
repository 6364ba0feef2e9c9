"""A DPO step: the preference stage's settings against TRL's own example, side by side in one run.

    .venv/bin/python benchmarks/dpo_step.py                                  # tiny random model (a minute)
    .venv/bin/python benchmarks/dpo_step.py --init results/sft --data results/data/preference --steps 4

TRL's example is the LoRA command in `trl/scripts/dpo.py` (TRL 1.16): LoRA r 32, alpha 16 on
PEFT's default modules (q_proj, v_proj) of every layer, 2 pairs per device with 8 accumulation steps, and
DPOConfig's defaults (1024 tokens, gradient checkpointing). The stage's is `params.yaml`'s
`preference:` section (the demo's: LoRA r 16 on every projection of the top 8 layers, 8 pairs per
step, 256 tokens). Both train the same init model on the same pairs, each in a process of its own
so that each peak resident set (or GPU allocation) is its own.

Prints, per setting: pairs per second, tokens per second (the pairs' real tokens, chosen and
rejected, prompt included), seconds per step and peak memory; then the stage's figures over
TRL's. Steps are timed from the end of the first (warm-up excluded) to the end of the last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from sft_throughput import bench_params  # noqa: E402

SETTINGS = ("stage", "trl_example")


def _tiny_inputs(tmp: Path) -> tuple[Path, Path]:
    """A tiny random Llama and the demo corpus's preference pairs, made by the real stages."""
    from posttrain.demo.corpus import write_demo_corpus
    from posttrain.stages import base_model, prepare_data

    params = bench_params({"model": {"base": "tiny:llama"}}, tmp)
    base_model.main(params, tmp / "base")
    write_demo_corpus(tmp / "demo")
    # the demo's preference sources, with their subsets, read from this copy of the corpus
    sources = [{**s.model_dump(exclude_none=True), "path": str(tmp / "demo" / Path(s.path).name)}
               for s in params.data.sources.preference]
    params = bench_params({"data": {"max_reject_ratio": 0.2, "sources": {"preference": sources}}}, tmp)
    prepare_data.main(params, "preference", [s["path"] for s in sources], tmp / "preference",
                      tokenizer_dir=tmp / "base")
    return tmp / "base", tmp / "preference"


def _trainer(setting: str, init: Path, data: Path, tmp: Path, steps: int):
    """The DPO trainer of one setting, on the demo preference stage's pairs."""
    from transformers import AutoModelForCausalLM

    from posttrain.training import preference
    from posttrain.training import trainers as training

    params = bench_params({}, tmp)
    cfg = params.preference
    st = next((s for s in cfg.stages if s.algorithm == "dpo"), None)
    if st is None:
        raise SystemExit("params.yaml declares no DPO stage under preference.stages to measure")
    run = {"eval_steps": 10**6, "save_steps": 10**6, "logging_steps": 10**6, "checkpoint_dir": str(tmp / "ckpt")}
    if setting == "trl_example":
        # trl/scripts/dpo.py's LoRA command: r 32, alpha 16, PEFT's default target modules for
        # Llama-family models (q_proj, v_proj), every layer; 2 pairs x 8 accumulation steps;
        # DPOConfig's 1024 tokens and gradient checkpointing
        run |= {"lora": {"r": 32, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
                         "target_parameters": [], "layers": None},
                "batch_size": 2, "grad_accum": 8, "max_length": 1024, "gradient_checkpointing": True}
    cfg = cfg.model_copy(update={k: v for k, v in run.items() if k != "lora"})
    if "lora" in run:
        cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update=run["lora"])})
    st = st.model_copy(update={"max_steps": steps, "lora": None})
    weights, tokenizer = training.init_model(init, "the init model")
    pairs, _, _ = preference.read_pairs(data / "train.jsonl", st.subsets, tokenizer, cfg.max_length)
    precision = training.resolve_precision(cfg.precision)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=precision["dtype"])
    if cfg.lora.layers and cfg.lora.layers >= model.config.num_hidden_layers:    # the tiny model: every layer
        cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"layers": None})})
    trainer = preference.build_trainer(model, tokenizer, pairs, pairs[:2], tmp / setting, cfg, st, precision)
    return trainer, cfg, pairs, tokenizer


def measure(setting: str, init: Path, data: Path, steps: int) -> dict:
    """One setting's steps, in this process (run it in a fresh one: the peak memory is the process's)."""
    from transformers import TrainerCallback

    from posttrain.models.reward_model import encode
    from posttrain.training import trainers as training

    class StepClock(TrainerCallback):
        ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as t:
        trainer, cfg, pairs, tokenizer = _trainer(setting, init, data, Path(t), steps)
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.train()
    per_step = cfg.batch_size * cfg.grad_accum
    seconds = clock.ends[-1] - clock.ends[0]
    timed = per_step * (steps - 1)
    tokens_per_pair = sum(len(encode(tokenizer, p["prompt"], p[side])) for p in pairs
                          for side in ("chosen", "rejected")) / len(pairs)
    lora = cfg.lora
    return {"setting": setting, "pairs_per_step": per_step, "max_length": cfg.max_length,
            "lora": f"LoRA r {lora.r} alpha {lora.alpha} on {','.join(lora.target_modules)} of "
                    f"{lora.layers or 'all'} layers",
            "gradient_checkpointing": cfg.gradient_checkpointing, "precision": cfg.precision,
            "seconds_per_step": seconds / (steps - 1), "pairs_per_second": timed / seconds,
            "tokens_per_second": timed * tokens_per_pair / seconds, "peak_memory_gb": training.peak_memory_gb()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", type=Path, help="the init model folder (default: a tiny random Llama)")
    ap.add_argument("--data", type=Path, help="prepared preference folder (default: the demo corpus's pairs)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per setting (the first is warm-up)")
    ap.add_argument("--setting", choices=SETTINGS, help=argparse.SUPPRESS)   # one setting, in a child process
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be at least 2: the first step is warm-up")
    if args.setting:
        print(json.dumps(measure(args.setting, args.init, args.data, args.steps)))
        return 0
    with tempfile.TemporaryDirectory() as t:
        init, data = (args.init, args.data) if args.init and args.data else _tiny_inputs(Path(t))
        rows = {}
        for setting in SETTINGS:
            out = subprocess.run([sys.executable, __file__, "--setting", setting, "--init", str(init), "--data",
                                  str(data), "--steps", str(args.steps)], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"setting {setting} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            rows[setting] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"init: {init}  data: {data}  steps: {args.steps} per setting (first one warm-up)")
    for r in rows.values():
        print(f"{r['setting']:<12} {r['pairs_per_step']:>3} pairs/step, {r['max_length']} tokens, {r['lora']}, "
              f"checkpointing {r['gradient_checkpointing']}, {r['precision']}")
        print(f"{'':<12} {r['seconds_per_step']:8.2f} s/step  {r['pairs_per_second']:8.2f} pairs/s  "
              f"{r['tokens_per_second']:9.1f} tokens/s  peak {r['peak_memory_gb']:.2f} GB")
    stage, trl = rows["stage"], rows["trl_example"]
    print(f"stage / TRL example: tokens/s {stage['tokens_per_second'] / trl['tokens_per_second']:.2f}x, "
          f"peak memory {stage['peak_memory_gb'] / trl['peak_memory_gb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
