"""Continuous batching against fixed batches: the evaluation's greedy generation, side by side
in one run.

    .venv/bin/python benchmarks/refilling.py --model results/sft --eval results/data/eval

Every eval prompt (arithmetic and format answers up to evaluate.max_new_tokens, safety answers up
to evaluate.safety_max_new_tokens, as the evaluation asks them) is answered on one thread
(posttrain.inference.generation.GENERATION_THREADS) three ways:
  - fixed batches of 16 through `model.generate`, each batch running until its longest answer ends
    (the evaluation before continuous batching);
  - `posttrain.inference.generation.greedy_refilling` with 16 and with 64 places, a finished row's place
    going to the next prompt.
Prints seconds, answer tokens per second, the speed-up over the fixed batches and how many
answers are identical to theirs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import posttrain.inference.generation as generation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("results/sft"))
    parser.add_argument("--eval", type=Path, default=Path("results/data/eval"), help="prepared eval data (prompts)")
    parser.add_argument("--params", type=Path, nargs="+", default=[Path("params.yaml")],
                        help="params.yaml and overlays (their evaluate section)")
    parser.add_argument("--places", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.config import load_params
    from posttrain.models import sources as models

    cfg = load_params(args.params).evaluate
    weights = models.weights_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    model = AutoModelForCausalLM.from_pretrained(weights).eval()
    rows = [json.loads(line) for line in open(args.eval / "test.jsonl")]
    groups = {"answers": ([r["prompt"] for r in rows if r["subset"] in ("arithmetic", "format")], cfg.max_new_tokens),
              "safety": ([r["prompt"] for r in rows if r["subset"] in ("harmful", "benign")],
                         cfg.safety_max_new_tokens)}

    def run(places: int, refill: bool) -> tuple[float, list[str]]:
        real = generation.refillable
        if not refill:
            generation.refillable = lambda model: False
        try:
            start, texts = time.perf_counter(), []
            for convs, new_tokens in groups.values():
                texts += generation.generate(model, tokenizer, convs, max_new_tokens=new_tokens, batch_size=places)
            return time.perf_counter() - start, texts
        finally:
            generation.refillable = real

    with generation.generation_threads():
        base_s, base = run(16, refill=False)
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in base)
        print(f"{len(base)} prompts, {tokens} answer tokens, one thread")
        print(f"{'how':<22}{'seconds':>9}{'tokens/s':>10}{'speed-up':>10}{'identical':>11}")
        print(f"{'fixed batches of 16':<22}{base_s:>9.1f}{tokens / base_s:>10.1f}{1.0:>10.2f}"
              f"{len(base):>7}/{len(base)}")
        for places in args.places:
            s, texts = run(places, refill=True)
            same = sum(a == b for a, b in zip(texts, base))
            print(f"{f'refilled, {places} places':<22}{s:>9.1f}{tokens / s:>10.1f}{base_s / s:>10.2f}"
                  f"{same:>7}/{len(base)}")


if __name__ == "__main__":
    main()
