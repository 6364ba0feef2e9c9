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
Last, the arithmetic under all of it (`--bare-sums N`): N random bare sums per operation and size,
completed greedily after two worked examples ("12 + 7 = 19", "45 - 20 = 25", then "a + b ="),
one-digit and in the eval's ranges (first operand up to 150, second up to 99).
"""

from __future__ import annotations

import argparse
import json
import random
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
    parser.add_argument("--bare-sums", type=int, default=60, help="bare sums per operation and size (0: none)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.inference.generation import generate
    from posttrain.models import sources as models
    from posttrain.verifiers import answers

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
        votes = [Counter(a for a in marked[i * k:(i + 1) * k] if a is not None).most_common(1)
                 for i in range(len(rows))]
        majority = sum(bool(v) and answers.same_answer(v[0][0], g) for v, g in zip(votes, golds)) / len(rows)
        checks = [[c.right for c in answers.calculations(t)] for t in texts]
        stated = [c for c in checks if c]
        eq_right = sum(all(c) for c in stated) / max(1, len(stated))
        print(f"{temperature:>11.2f}{sum(hits) / len(hits):>8.3f}{solved:>9.3f}{majority:>8.3f}{eq_right:>17.3f}"
              f"{solved / greedy_acc if greedy_acc else float('nan'):>17.2f}")
    if args.bare_sums:
        _bare_sums(model, tokenizer, args.bare_sums)


BARE_SIZES = {"one-digit": ((1, 9), (1, 9)), "eval range": ((2, 150), (2, 99))}
BARE_EXAMPLES = "12 + 7 = 19\n45 - 20 = 25\n"


def _bare_sums(model, tokenizer, n: int) -> None:
    """Greedy accuracy on bare sums: the arithmetic a word problem's answer rests on."""
    rng = random.Random(1)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    print(f"bare sums, greedy, after two worked examples ({n} each):")
    for size, (first, second) in BARE_SIZES.items():
        for op in "+-":
            sums = []
            for _ in range(n):
                a, b = rng.randint(*first), rng.randint(*second)
                a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)   # no negative results
                sums.append((f"{a} {op} {b} =", a + b if op == "+" else a - b))
            enc = tokenizer([BARE_EXAMPLES + q for q, _ in sums], return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            right = sum([w.rstrip(".") for w in t.split()[:1]] == [str(v)] for t, (_, v) in zip(texts, sums))
            print(f"{size:>11} {op}  {right / n:.3f}")


if __name__ == "__main__":
    main()
