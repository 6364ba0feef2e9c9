"""Peak memory and time of a GRPO stage's steps with its batch trained whole and in micro-batches
(`micro_batches` of an RL stage), measured side by side in one run.

    .venv/bin/python benchmarks/rl_micro_batches.py                       # tiny random model
    .venv/bin/python benchmarks/rl_micro_batches.py --model results/sft --prompts results/data/prompts \
        --prompts-per-step 4 --generations 8 --micro-batches 4 --lora-layers 0

Each configuration runs `posttrain rl` in a process of its own (so peak RSS is its own): the
same stage, seed and steps, one with the step's prompts x generations completions in one
backward pass, one split into `--micro-batches`. Prints both, and the ratios micro / whole.
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


def _run(model: Path, prompts: Path, tmp: Path, args, micro: int, overlays: list[Path]) -> dict:
    stage = {"name": "reasoning", "init": "sft", "subsets": [args.subset],
             "rewards": [{"name": "accuracy", "weight": 1.0}], "max_steps": args.steps,
             "save_steps": args.steps, "prompts_per_step": args.prompts_per_step,
             "num_generations": args.generations, "micro_batches": micro,
             "max_completion_length": args.tokens, "temperature": 0.8, "learning_rate": 1e-4}
    lora = {"layers": args.lora_layers or None}
    overlay = tmp / f"micro{micro}.yaml"
    overlay.write_text(json.dumps({"rl": {"stages": [stage], "zero": None, "lora": lora, "selection_prompts": 4,
                                          "checkpoint_dir": str(tmp / f"ckpt{micro}")}}))
    cmd = [sys.executable, "-m", "posttrain.cli", "rl", "--stage", "reasoning", "--init", str(model),
           "--prompts", str(prompts), "--out", str(tmp / f"out{micro}"), "--params", str(ROOT / "params.yaml")]
    for o in [*overlays, overlay]:
        cmd += ["--params", str(o)]
    # A parent of its own per run reports that run's peak (RUSAGE_CHILDREN keeps the largest so far).
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", measure, *cmd], cwd=tmp, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"micro_batches={micro} failed:\n{done.stderr[-3000:]}")
    return {"micro_batches": micro, "peak_rss_mb": int(done.stdout.split()[-1]) / 1024, "seconds": seconds,
            "steps": json.loads((tmp / f"out{micro}" / "metrics.json").read_text())["steps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="init model folder (default: a tiny random model)")
    ap.add_argument("--prompts", type=Path, help="prepared prompt set (default: the tiny model's sums)")
    ap.add_argument("--subset", default="arithmetic")
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--micro-batches", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--lora-layers", type=int, default=0, help="adapt the top N layers (0: all)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        overlays: list[Path] = []
        if args.model is None:
            from rl_step import _tiny
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import TINY_OVERLAY
            args.model, args.prompts = _tiny(tmp)
            overlays.append(TINY_OVERLAY)
        whole = _run(args.model.resolve(), args.prompts.resolve(), tmp, args, 1, overlays)
        micro = _run(args.model.resolve(), args.prompts.resolve(), tmp, args, args.micro_batches, overlays)
    n = args.prompts_per_step * args.generations
    print(f"{args.steps} GRPO steps of {args.prompts_per_step} prompts x {args.generations} completions "
          f"({n} a step, {args.tokens} tokens at most), LoRA on {args.lora_layers or 'all'} layers")
    for r in (whole, micro):
        print(f"  micro_batches={r['micro_batches']}: peak RSS {r['peak_rss_mb']:.0f} MB, {r['seconds']:.1f} s "
              f"(the process, loading and selection included), {r['steps']} steps")
    print(f"ratio micro / whole: peak RSS {micro['peak_rss_mb'] / whole['peak_rss_mb']:.2f}, "
          f"time {micro['seconds'] / whole['seconds']:.2f}")


if __name__ == "__main__":
    main()
