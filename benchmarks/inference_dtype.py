"""float32 against bfloat16 for a model that only answers: the evaluation's greedy decoding and
reward-model scoring, side by side in one run, on one thread.

    .venv/bin/python benchmarks/inference_dtype.py --model results/sft --eval results/data/eval \
        --reward results/reward/helpful

The eval prompts (arithmetic and format answers up to evaluate.max_new_tokens, safety answers up
to evaluate.safety_max_new_tokens) are answered by the model in float32 and in bfloat16
(`evaluate.dtype`); the reward model then scores the float32 answers in both dtypes. Prints the
CPU's bfloat16 support, seconds, the speed-up, how many answers are identical, and the reward
scores' mean difference and spread (against the spread of the scores themselves).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import posttrain.inference.generation as generation
from posttrain.inference import dtype as inference_dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("results/sft"))
    parser.add_argument("--eval", type=Path, default=Path("results/data/eval"), help="prepared eval data (prompts)")
    parser.add_argument("--reward", type=Path, default=None, help="a reward model folder (results/reward/helpful)")
    parser.add_argument("--params", type=Path, nargs="+", default=[Path("params.yaml")],
                        help="params.yaml and overlays (their evaluate section)")
    parser.add_argument("--limit", type=int, default=None, help="prompts per group (default: all)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.config import load_params
    from posttrain.models import sources as models
    from posttrain.models.reward_model import RewardModel

    cfg = load_params(args.params).evaluate
    weights = models.weights_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    rows = [json.loads(line) for line in open(args.eval / "test.jsonl")]
    groups = [([r["prompt"] for r in rows if r["subset"] in kinds][: args.limit], tokens)
              for kinds, tokens in ((("arithmetic", "format"), cfg.max_new_tokens),
                                    (("harmful", "benign"), cfg.safety_max_new_tokens))]
    print(f"CPU multiplies bfloat16 natively: {inference_dtype.cpu_has_bf16()}; one thread")
    answers, seconds = {}, {}
    with generation.generation_threads():
        for dtype in (torch.float32, torch.bfloat16):
            model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype).eval()
            start, texts = time.perf_counter(), []
            for prompts, new_tokens in groups:
                texts += generation.generate(model, tokenizer, prompts, max_new_tokens=new_tokens,
                                             batch_size=cfg.batch_size)
            seconds[dtype], answers[dtype] = time.perf_counter() - start, texts
        n = len(answers[torch.float32])
        same = sum(a == b for a, b in zip(answers[torch.float32], answers[torch.bfloat16]))
        print(f"{'decoding':<24}{'seconds':>9}{'speed-up':>10}{'identical':>11}")
        print(f"{'float32':<24}{seconds[torch.float32]:>9.1f}{1.0:>10.2f}{n:>7}/{n}")
        print(f"{'bfloat16':<24}{seconds[torch.bfloat16]:>9.1f}"
              f"{seconds[torch.float32] / seconds[torch.bfloat16]:>10.2f}{same:>7}/{n}")
        if args.reward is None:
            return
        prompts = [p for group, _ in groups for p in group]
        scores, timing = {}, {}
        for dtype in ("float32", "bfloat16"):
            rm = RewardModel.load(args.reward, dtype=dtype)
            start = time.perf_counter()
            scores[dtype] = rm.score(prompts, answers[torch.float32], batch_size=cfg.reward_batch_size)
            timing[dtype] = time.perf_counter() - start
        diff = [b - a for a, b in zip(scores["float32"], scores["bfloat16"])]
        speedup = timing["float32"] / timing["bfloat16"]
        print(f"reward model {args.reward}: float32 {timing['float32']:.1f} s, bfloat16 {timing['bfloat16']:.1f} s "
              f"({speedup:.2f}x); bfloat16 - float32: mean {statistics.mean(diff):+.4f}, "
              f"sd {statistics.pstdev(diff):.4f} (scores' sd {statistics.pstdev(scores['float32']):.4f})")


if __name__ == "__main__":
    main()
