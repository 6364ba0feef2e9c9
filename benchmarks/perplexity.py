"""Held-out perplexity: one conversation at a time with every position's logits, against
`posttrain.inference.generation.assistant_nll` (sorted batches, LM head at scored positions only), side by
side in one run.

    .venv/bin/python benchmarks/perplexity.py --model results/sft --heldout results/data/sft [--rows 100]

Both compute the perplexity of the assistant tokens of the first `rows` validation rows (what
`posttrain evaluate` reports) on one thread, with the model loaded as the evaluation loads it
(`evaluate.dtype` of `--params`). Prints seconds, the perplexity of each and the speed-up for a
few batch sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def one_at_a_time(model, tokenizer, conversations) -> tuple[float, int]:
    import torch

    total, count = 0.0, 0
    for conv in conversations:
        enc = tokenizer.apply_chat_template(conv, return_dict=True, return_assistant_tokens_mask=True)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].float()
        mask = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool)
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")[mask].sum())
        count += int(mask.sum())
    return total, count


def main() -> None:
    from transformers import AutoTokenizer

    from posttrain.config import load_params
    from posttrain.inference import dtype as inference_dtype
    from posttrain.inference.generation import assistant_nll, generation_threads
    from posttrain.models.artifacts import resolve_model
    from posttrain.stages.evaluate import _load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("results/sft"))
    ap.add_argument("--heldout", type=Path, default=Path("results/data/sft"))
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[8, 16, 32])
    ap.add_argument("--params", type=Path, nargs="+", default=[Path("params.yaml")],
                    help="params.yaml and overlays (their evaluate.dtype)")
    args = ap.parse_args()
    weights, adapter, _ = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(adapter or weights)
    dtype = inference_dtype.resolve(load_params(args.params).evaluate.dtype)
    model = _load(weights, adapter, dtype)
    print(f"{args.model} in {dtype}, one thread")
    rows = [json.loads(line)["messages"] for line in open(args.heldout / "val.jsonl")][:args.rows]
    with generation_threads():
        started = time.perf_counter()
        nll, n = one_at_a_time(model, tokenizer, rows)
        base = time.perf_counter() - started
        print(f"one at a time, every position: {base:6.1f} s  perplexity {math.exp(nll / n):.6f} ({n} tokens)")
        for batch_size in args.batch_sizes:
            started = time.perf_counter()
            nll, n = assistant_nll(model, tokenizer, rows, batch_size=batch_size)
            seconds = time.perf_counter() - started
            print(f"assistant_nll, batches of {batch_size:2d}:   {seconds:6.1f} s  perplexity {math.exp(nll / n):.6f} "
                  f"({n} tokens)  speed-up {base / seconds:.2f}x")


if __name__ == "__main__":
    main()
