"""The production recipe's training stages on one GPU: SFT, both reward models, the PPO stages
(helpfulness, safety) and the GRPO stage (reasoning), on the rehearsal's tiny MoE in the recipe's
bf16, on CUDA. What a CPU rehearsal cannot show: that the stages' CUDA paths (bf16 autocast, the
MoE's expert kernels, PEFT on fused experts, TRL's trainers on a GPU) run at all.

    python tests/gpu/rehearse_on_gpu.py OUT          # on a machine with one GPU, under 10 minutes
    python tests/gpu/rehearse_on_gpu.py OUT --print  # anywhere: the commands it would run

The machine needs the pipeline's Python packages that its image lacks, carried as wheels (see
tests/gpu/README.md). No Snakemake there: the stages' own commands, from the same stage table and
the same rehearsal overlay (`device: cuda`: the recipe's precision kept, one process per stage),
run one after another. Writes OUT/gpu_rehearsal.json: per rule, its exit code, seconds and the last
lines of its log; exits 1 when a stage failed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from posttrain import dag  # noqa: E402
from posttrain.config import load_params  # noqa: E402
from posttrain.rehearsal import run, standins  # noqa: E402

RECIPE = "recipes/qwen3-30b-a3b.yaml"
WANTED = ("sft", "reward_helpful", "reward_safety", "rl_helpfulness", "rl_safety", "rl_reasoning")


def main(out: Path, print_only: bool = False) -> int:
    import torch

    if not torch.cuda.is_available() and not print_only:
        print("no CUDA device: this script is for a GPU machine (--print lists its commands)", file=sys.stderr)
        return 2
    files = ["params.yaml", RECIPE]
    params = load_params([ROOT / f for f in files])
    work = run.work_tree(out / "work", ROOT)
    overlay, found = standins.overlay(params, ROOT, device="cuda")
    (work / run.OVERLAY).write_text(yaml.safe_dump(overlay, sort_keys=False))
    files.append(run.OVERLAY)
    os.chdir(work)                      # the table reads the overlays where the commands will
    table = {s.name: s for s in dag.stages(load_params(files), files)}
    if print_only:
        for name in _with_upstream(table):
            print(f"{name}: {table[name].cmd}")
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "stand_ins": [s.__dict__ for s in found], "rules": {}}
    for name in _with_upstream(table):
        cmd = table[name].cmd.replace("posttrain ", f"{shlex.quote(sys.executable)} -m posttrain.cli ", 1)
        start = time.time()
        res = subprocess.run(cmd, shell=True, cwd=work, env=env, capture_output=True, text=True)
        log = (res.stdout + res.stderr).splitlines()
        results["rules"][name] = {"exit": res.returncode, "seconds": round(time.time() - start, 1),
                                  "log_tail": log[-15:]}
        print(f"{name}: exit {res.returncode} in {time.time() - start:.0f} s", flush=True)
        if res.returncode != 0 and name not in WANTED:      # the stages behind it cannot run
            break
    (out / "gpu_rehearsal.json").write_text(json.dumps(results, indent=1))
    return int(any(r["exit"] for r in results["rules"].values()))


def _with_upstream(table: dict) -> list[str]:
    """The wanted rules and every rule they read from, in the table's order."""
    by_out = {o: name for name, s in table.items() for o in s.outs}
    need: set[str] = set()
    todo = list(WANTED)
    while todo:
        name = todo.pop()
        if name in need:
            continue
        need.add(name)
        todo += [by_out[d] for d in table[name].deps if d in by_out]
    return [name for name in table if name in need]


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--print"]
    sys.exit(main(Path(args[0] if args else "gpu-rehearsal").resolve(), print_only="--print" in sys.argv))
