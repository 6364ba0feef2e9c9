"""Training in float32 against bf16 mixed precision on a CPU, side by side in one run.

    .venv/bin/python benchmarks/training_precision.py                        # tiny random model
    .venv/bin/python benchmarks/training_precision.py --model results/sft --base results/base \
        --data results/data/sft --prompts results/data/prompts --reward results/reward/helpful

`precision: auto` trains in bf16 mixed precision on a CPU with bfloat16 instructions
(posttrain.training.trainers.resolve_precision): float32 weights and optimiser, the passes under
autocast, RL rollouts sampled from a bfloat16 copy of the weights. Prints, for fp32 and bf16:
  1. the SFT stage's training tokens/s (benchmarks/sft_throughput.py's measurement);
  2. a GRPO stage's seconds (generation, rewards, updates, held-out selection, saving);
  3. a PPO stage's seconds (rollouts with reward model, reference and critic, PPO updates);
and each bf16/fp32 speed-up. On a CPU without bfloat16 instructions bf16 is emulated: the ratio
shows how much slower it is there, which is why `auto` keeps fp32 on such a CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import rl_step  # noqa: E402
import sft_throughput  # noqa: E402
from posttrain.inference.dtype import cpu_has_bf16  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def sft_speeds(base: Path, data: Path, tmp: Path, steps: int) -> dict[str, float]:
    return {p: sft_throughput.stage_tokens_per_second(base, data, tmp, steps, precision=p)[0] for p in PRECISIONS}


def rl_seconds(model: Path, prompts: Path, reward: Path, steps: int, tokens: int, layers: int | None) -> dict:
    grpo = {"name": "bench", "subsets": ["arithmetic"], "rewards": [{"name": "accuracy"}], "max_steps": steps,
            "save_steps": steps, "max_completion_length": tokens, "beta": 0.02}
    ppo = {"name": "bench", "algorithm": "ppo", "subsets": ["arithmetic"], "max_steps": steps, "save_steps": steps,
           "rewards": [{"name": "reward_model", "aspect": "helpful"}, {"name": "accuracy"}],
           "max_completion_length": tokens, "prompts_per_step": 4, "num_generations": 2, "beta": 0.05,
           "ppo": {"epochs": 2, "mini_batches": 2}}
    return {name: {p: rl_step._run_stage(st, layers, model, prompts, {"helpful": reward}, precision=p)[0]
                   for p in PRECISIONS}
            for name, st in (("GRPO stage", grpo), ("PPO stage", ppo))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="the RL stages' init model, e.g. results/sft")
    ap.add_argument("--base", type=Path, help="the SFT stage's base model, e.g. results/base")
    ap.add_argument("--data", type=Path, help="prepared SFT data, e.g. results/data/sft")
    ap.add_argument("--prompts", type=Path, help="prepared prompts, e.g. results/data/prompts")
    ap.add_argument("--reward", type=Path, help="a reward model for PPO, e.g. results/reward/helpful")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--lora-layers", type=int, default=None, help="RL LoRA on the top N layers (the demo: 8)")
    args = ap.parse_args()
    given = [args.model, args.base, args.data, args.prompts, args.reward]
    if any(given) and not all(given):
        ap.error("--model, --base, --data, --prompts and --reward go together (a finished demo's results/)")
    print(f"CPU bfloat16 instructions: {'yes' if cpu_has_bf16() else 'no (bf16 is emulated)'}; "
          f"threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if all(given):
            model, base, data, prompts, reward = given
        else:
            base, data = sft_throughput._tiny_inputs(tmp)
            model, prompts = rl_step._tiny(tmp / "rl")
            reward = rl_step._tiny_reward_model(tmp, model)
        sft = sft_speeds(base, data, tmp, args.steps + 2)
        print(f"SFT tokens/s: fp32 {sft['fp32']:.1f}, bf16 {sft['bf16']:.1f}, "
              f"bf16/fp32 {sft['bf16'] / sft['fp32']:.2f}x")
        for name, secs in rl_seconds(model, prompts, reward, args.steps, args.tokens, args.lora_layers).items():
            print(f"{name}, {args.steps} steps: fp32 {secs['fp32']:.1f} s, bf16 {secs['bf16']:.1f} s, "
                  f"speed-up {secs['fp32'] / secs['bf16']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
