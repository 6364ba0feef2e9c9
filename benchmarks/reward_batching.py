"""Reward-model training with pairs batched by length against random batches, side by side.

    .venv/bin/python benchmarks/reward_batching.py                      # tiny random model (a minute)
    .venv/bin/python benchmarks/reward_batching.py --init results/sft --data results/data/preference \\
        --aspect safety                                                 # the demo's safety reward model

Runs the reward stage twice on the same inputs and params, `reward.group_by_length` off then on,
and prints for each: the tokens its batches hold per epoch (a batch pads every sequence to its
longest), the stage's wall time, steps and held-out pairwise accuracy; then the ratios
random / grouped.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _params(overrides: dict, tmp: Path, extra: list[Path]):
    from posttrain.config import load_params

    path = tmp / "bench.yaml"
    path.write_text(json.dumps(overrides))
    return load_params([ROOT / "params.yaml", *extra, path])


def _tiny_inputs(tmp: Path) -> tuple[Path, Path, list[Path]]:
    """A tiny random Llama and the demo corpus's preference split, made by the real stages."""
    from posttrain.demo.corpus import write_demo_corpus
    from posttrain.stages import base_model, prepare_data

    overlay = [ROOT / "tests" / "data" / "tiny.yaml"]
    params = _params({}, tmp, overlay)
    base_model.main(params, tmp / "base")
    files = write_demo_corpus(tmp / "demo")
    inputs = [str(files[n]) for n in ("preference_helpful", "preference_safety_hh")]
    prepare_data.main(params, "preference", inputs, tmp / "preference", tokenizer_dir=tmp / "base")
    return tmp / "base", tmp / "preference", overlay


def batch_tokens(params, aspect: str, init: Path, data: Path, tmp: Path) -> int:
    """Tokens (padding included) in one epoch of the stage's training batches."""
    from transformers import AutoModelForSequenceClassification

    from posttrain.stages import reward
    from posttrain.training import trainers as training

    cfg = params.reward
    weights, tokenizer = training.init_model(init, "reward init")
    train, _ = reward._pairs(data / "train.jsonl", cfg.aspects[aspect].subsets, tokenizer, cfg)
    model = AutoModelForSequenceClassification.from_pretrained(weights, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = reward._build_trainer(model, tokenizer, train, train[:2], tmp / "count", cfg,
                                    training.resolve_precision(cfg.precision))
    return sum(batch["input_ids"].numel() for batch in trainer.get_train_dataloader())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", type=Path, help="the reward model's init model (default: a tiny random model)")
    ap.add_argument("--data", type=Path, help="a prepare-data --kind preference folder")
    ap.add_argument("--aspect", default="safety")
    ap.add_argument("--params", type=Path, action="append", default=[], help="overlays on params.yaml")
    args = ap.parse_args()

    from posttrain.stages import reward

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        overrides: dict = {}
        if args.init is None:
            init, data, extra = _tiny_inputs(tmp)
            # the tiny corpus's rows keep their file names as subsets: one aspect learns them all
            overrides = {"aspects": {args.aspect: {"subsets": reward._subsets(data)}}}
        else:
            init, data, extra = args.init, args.data, args.params
        rows = {}
        for grouped in (False, True):
            params = _params({"reward": {**overrides, "group_by_length": grouped,
                                         "checkpoint_dir": str(tmp / f"ckpt{grouped}")}}, tmp, extra)
            tokens = batch_tokens(params, args.aspect, init, data, tmp)
            start = time.perf_counter()
            reward.main(params, args.aspect, init, data, tmp / f"out{grouped}")
            seconds = time.perf_counter() - start
            metrics = json.loads((tmp / f"out{grouped}" / "metrics.json").read_text())
            rows[grouped] = (tokens, seconds, metrics["steps"], metrics["heldout_accuracy"])
            print(f"group_by_length={grouped}: {tokens} batch tokens per epoch, stage {seconds:.1f} s, "
                  f"{metrics['steps']} steps, held-out accuracy {metrics['heldout_accuracy']:.3f}", flush=True)
        (tok_r, sec_r, _, _), (tok_g, sec_g, _, _) = rows[False], rows[True]
        print(f"ratios random / grouped: batch tokens {tok_r / tok_g:.2f}, stage time {sec_r / sec_g:.2f}")


if __name__ == "__main__":
    main()
