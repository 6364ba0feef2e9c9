"""How much an RL stage can sharpen: a model's greedy accuracy on the eval's arithmetic problems
against what its samples reach, side by side in one run.

    .venv/bin/python benchmarks/sampling_headroom.py --model results/sft --eval results/data/eval \
        --samples 4 --temperatures 0.8 0.5

GRPO learns only from problems where some completion of a group is right: its reachable gain on
a problem set is bounded by pass@k there (k = the group size, at the stage's temperature), not by
how often the greedy answer is wrong. Prints, for the eval split's arithmetic problems (strict
`#### N` answers, as the evaluation scores them): greedy accuracy; then per temperature the mean
accuracy of the samples, pass@k (a problem counts when any of its k samples is right), maj@k (the
most frequent of the k marked answers is right: where sharpening a policy on its own samples
leads), the share of stated equations ("a - b = r") whose arithmetic is right; and pass@k / greedy.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("results/sft"))
    parser.add_argument("--eval", type=Path, default=Path("results/data/eval"))
    parser.add_argument("--samples", type=int, default=4, help="k: samples per problem (an RL group)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.8, 0.5])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain import answers, models
    from posttrain.generation import generate

    torch.set_num_threads(args.threads)
    weights = models.weights_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    model = AutoModelForCausalLM.from_pretrained(weights)
    rows = [json.loads(line) for line in open(args.eval / "test.jsonl")]
    rows = [r for r in rows if r["subset"] == "arithmetic"]
    convs, golds = [r["prompt"] for r in rows], [r["answer"] for r in rows]

    def right(text: str, gold: str) -> bool:
        return answers.same_answer(answers.final_answer(text, marked_only=True), gold)

    greedy = generate(model, tokenizer, convs, max_new_tokens=args.max_new_tokens, batch_size=16)
    greedy_acc = sum(right(t, g) for t, g in zip(greedy, golds)) / len(rows)
    print(f"{len(rows)} arithmetic problems; greedy accuracy {greedy_acc:.3f}")
    print(f"{'temperature':>11}{'mean':>8}{f'pass@{args.samples}':>9}{f'maj@{args.samples}':>8}{'equations right':>17}"
          f"{'pass@k / greedy':>17}")
    k = args.samples
    for temperature in args.temperatures:
        texts = generate(model, tokenizer, [c for c in convs for _ in range(k)], max_new_tokens=args.max_new_tokens,
                         batch_size=16, temperature=temperature, seed=0)
        hits = [right(t, golds[i // k]) for i, t in enumerate(texts)]
        solved = sum(any(hits[i * k:(i + 1) * k]) for i in range(len(rows))) / len(rows)
        marked = [answers.final_answer(t, marked_only=True) for t in texts]
        votes = [Counter(a for a in marked[i * k:(i + 1) * k] if a is not None).most_common(1) for i in range(len(rows))]
        majority = sum(bool(v) and answers.same_answer(v[0][0], g) for v, g in zip(votes, golds)) / len(rows)
        checks = [[c.right for c in answers.calculations(t)] for t in texts]
        stated = [c for c in checks if c]
        eq_right = sum(all(c) for c in stated) / max(1, len(stated))
        print(f"{temperature:>11.2f}{sum(hits) / len(hits):>8.3f}{solved:>9.3f}{majority:>8.3f}{eq_right:>17.3f}"
              f"{solved / greedy_acc if greedy_acc else float('nan'):>17.2f}")


if __name__ == "__main__":
    main()
