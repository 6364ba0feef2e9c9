"""Where greedy decoding's time goes on a CPU core: the evaluation's and the distillation
teacher's generation, measured side by side in one run.

    .venv/bin/python benchmarks/generation.py --model results/sft --eval results/data/eval

Prints, on one thread (what the evaluation uses, posttrain.inference.generation.GENERATION_THREADS):
  1. seconds per decoding step and tokens/s at each batch size, every row forced to the same
     number of new tokens (the prompt's forward pass measured apart and taken out), and the
     throughput ratio of the largest batch to the smallest;
  2. the shares of one batch's decoding steps spent in matrix products, in growing the KV cache
     (concatenation) and in attention, from the PyTorch profiler;
  3. the arithmetic rate (2 x parameters x tokens / seconds) of decoding at each batch size
     against that of one forward pass over the whole prompts: how far from the core's matrix
     speed a decoding step runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def _decode(model, enc, new_tokens: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("results/sft"))
    parser.add_argument("--eval", type=Path, default=Path("results/data/eval"), help="prepared eval data (prompts)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    from torch.profiler import profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.inference.generation import generation_threads
    from posttrain.models import sources as models

    weights = models.weights_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(weights).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    rows = [json.loads(line) for line in open(args.eval / "test.jsonl")]
    texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]

    def batch(n: int):
        return tokenizer((texts * (n // len(texts) + 1))[:n], return_tensors="pt", padding=True,
                         add_special_tokens=False)

    with generation_threads():
        _decode(model, batch(2), 2)  # warm-up
        flop = 2 * sum(p.numel() for p in model.parameters())  # per token, attention aside
        rates = {}
        print(f"{'batch':>6} {'s/step':>8} {'tokens/s':>9} {'GFLOP/s':>8}")
        for n in args.batch_sizes:
            enc = batch(n)
            seconds = _decode(model, enc, args.new_tokens + 1) - _decode(model, enc, 1)
            rates[n] = n * args.new_tokens / seconds
            print(f"{n:>6} {seconds / args.new_tokens:>8.3f} {rates[n]:>9.1f} {rates[n] * flop / 1e9:>8.1f}")
        small, large = min(rates), max(rates)
        print(f"throughput batch {large} / batch {small}: {rates[large] / rates[small]:.2f}")
        enc = batch(small)
        start = time.perf_counter()
        with torch.no_grad():
            model(**enc)
        prompt_rate = enc["attention_mask"].sum().item() * flop / (time.perf_counter() - start) / 1e9
        print(f"one forward pass over batch {small}'s prompts: {prompt_rate:.1f} GFLOP/s; decoding at batch "
              f"{small} runs at {rates[small] * flop / 1e9 / prompt_rate:.2f} of that")

        with profile() as prof:
            _decode(model, enc, args.new_tokens)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        totals[event.key] = totals.get(event.key, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values())

    def share(*names: str) -> float:
        return sum(v for k, v in totals.items() if any(n in k for n in names)) / whole

    print(f"batch {small}, {args.new_tokens} new tokens (prompt's forward pass included): matrix products "
          f"{share('aten::mm', 'aten::addmm', 'aten::bmm'):.0%}, KV-cache concatenation {share('aten::cat'):.0%}, "
          f"attention {share('scaled_dot_product'):.0%}")


if __name__ == "__main__":
    main()
