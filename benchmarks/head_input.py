"""A frozen LM head fed a sliced (non-contiguous) input, against the same input made contiguous
(posttrain.models.head), side by side in one run, on one thread.

    .venv/bin/python benchmarks/head_input.py --model results/sft --eval results/data/eval

The model is loaded as the evaluation loads it (an adapter merged, `evaluate.dtype`, no weight
requiring grad) and measured three ways, first as transformers leaves it, then with the head's
input made contiguous:
  - the evaluation's greedy decoding of the eval prompts (the first token of each batch of
    answers comes from a slice of the prompt's last position),
  - one prefill of `--batch` prompts (that slice alone),
  - a training step as TRL's GRPO scores log-probabilities: `--batch` sequences, the logits of
    the last `--completion` positions only, backward through every layer but the frozen head.
Prints seconds, the speed-up, and whether the answers and logits are identical.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import posttrain.inference.generation as generation
from posttrain.inference import dtype as inference_dtype
from posttrain.models.head import contiguous_head_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("results/sft"))
    parser.add_argument("--eval", type=Path, default=Path("results/data/eval"), help="prepared eval data (prompts)")
    parser.add_argument("--params", type=Path, nargs="+", default=[Path("params.yaml")],
                        help="params.yaml and overlays (their evaluate section)")
    parser.add_argument("--limit", type=int, default=None, help="prompts per subset (default: all)")
    parser.add_argument("--batch", type=int, default=32, help="rows of the prefill and the training step")
    parser.add_argument("--completion", type=int, default=64, help="scored positions of the training step")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from posttrain.config import load_params
    from posttrain.stages.evaluate import _load, resolve_model

    cfg = load_params(args.params).evaluate
    weights, adapter, _ = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(adapter or weights)
    dtype = inference_dtype.resolve(cfg.dtype)
    model = _load(weights, adapter, dtype).requires_grad_(False)
    rows = [json.loads(line) for line in open(args.eval / "test.jsonl")]
    subsets = sorted({r["subset"] for r in rows})
    prompts = [r["prompt"] for s in subsets for r in [r for r in rows if r["subset"] == s][: args.limit]]
    torch.manual_seed(0)
    ids = torch.randint(100, tokenizer.vocab_size - 100, (args.batch, 48 + args.completion))
    print(f"{args.model} in {dtype}, one thread; {len(prompts)} eval prompts, batch {args.batch}")

    results = {}
    with generation.generation_threads():
        _prefill(model, ids)                                   # warm-up: first-call costs out of both
        for label in ("sliced (as transformers leaves it)", "contiguous (posttrain.models.head)"):
            if label.startswith("contiguous"):
                contiguous_head_input(model)
            start = time.perf_counter()
            answers = generation.generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                                          batch_size=cfg.batch_size)
            decode = time.perf_counter() - start
            start = time.perf_counter()
            logits = _prefill(model, ids)
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            _training_step(model, ids, args.completion)
            step = time.perf_counter() - start
            results[label] = (decode, prefill, step, answers, logits)

    print(f"{'':<38}{'decoding':>10}{'prefill':>10}{'train step':>12}")
    for label, (decode, prefill, step, _, _) in results.items():
        print(f"{label:<38}{decode:>9.1f}s{prefill:>9.2f}s{step:>11.2f}s")
    (d0, p0, s0, a0, l0), (d1, p1, s1, a1, l1) = results.values()
    same = sum(x == y for x, y in zip(a0, a1))
    print(f"{'speed-up':<38}{d0 / d1:>9.2f}x{p0 / p1:>9.2f}x{s0 / s1:>11.2f}x")
    print(f"identical answers {same}/{len(a0)}; identical prefill logits: {torch.equal(l0, l1)}")


def _prefill(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, logits_to_keep=1).logits


def _training_step(model, ids: torch.Tensor, completion: int) -> None:
    """Forward and backward as a LoRA step scores its completion: every layer but the head takes
    gradients (the head stays frozen, as LoRA leaves it)."""
    for p in model.model.layers.parameters():
        p.requires_grad_(True)
    try:
        logits = model(input_ids=ids, logits_to_keep=completion + 1).logits
        logits[:, :-1].float().log_softmax(-1).mean().backward()
    finally:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None


if __name__ == "__main__":
    main()
