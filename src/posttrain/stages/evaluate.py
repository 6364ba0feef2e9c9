"""Evaluate stage: the eval suite on one model the DAG made.

    posttrain evaluate --model results/sft --name sft --eval-data results/data/eval \\
        --heldout results/data/sft --out results/eval/sft [--params params.yaml ...]

- lm-evaluation-harness on custom local tasks written from the eval split (arithmetic with
  gsm8k-style strict/flexible extraction, instruction format, gsm8k when present), greedy, with the
  model's chat template; an adapter is evaluated through `peft=` on its base;
- safety: refusal rate on harmful prompts and over-refusal rate on benign-but-edgy prompts
  (rule-based refusal detector on greedy generations);
- perplexity of the assistant turns of held-out SFT data.
Writes metrics.json (canonical names), harness.json (raw harness results), samples.jsonl
(every generation with its verdict) and manifest.json.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

from posttrain import chat, harness
from posttrain.config import Params, section
from posttrain.generation import assistant_nll, generate
from posttrain.manifest import require_manifest, write_json, write_manifest
from posttrain.refusal import is_refusal

log = logging.getLogger(__name__)


def resolve_model(folder: Path) -> tuple[Path, Path | None, dict]:
    """(weights folder, adapter folder or None, manifest) for an artifact folder: a base model,
    or a training stage's output with adapter/ (evaluated on its base) or merged/."""
    manifest = require_manifest(folder, "base-model or a training stage")
    if (folder / "adapter").is_dir():
        base = Path(manifest["inputs"]["base"]["path"])
        require_manifest(base, "base-model")
        return base, folder / "adapter", manifest
    if (folder / "merged").is_dir():
        return folder / "merged", None, manifest
    return folder, None, manifest


def main(params: Params, model_dir: Path, name: str, eval_dir: Path, heldout_dir: Path | None, out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = params.evaluate
    weights, adapter, manifest = resolve_model(model_dir)
    require_manifest(eval_dir, "prepare-data --kind eval")
    tokenizer = AutoTokenizer.from_pretrained(adapter or weights)
    if chat.template_hash(tokenizer.chat_template) != manifest.get("chat_template_sha256"):
        raise ValueError(f"{model_dir}: the tokenizer's chat template differs from the one its manifest records; "
                         f"the model would be evaluated with a template it was not trained with")
    rows = [json.loads(line) for line in open(eval_dir / "test.jsonl")]

    # 1. Harness tasks (arithmetic, format, gsm8k) from the eval split.
    task_dir = out.parent / f".{out.name}-tasks"
    if task_dir.exists():
        shutil.rmtree(task_dir)
    tasks = harness.write_tasks(eval_dir / "test.jsonl", task_dir, limit=cfg.limit)
    result = harness.run_harness(weights, tasks + list(cfg.harness_tasks), task_dir, adapter_dir=adapter,
                                 limit=cfg.limit, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                 seed=cfg.seed)
    shutil.rmtree(task_dir, ignore_errors=True)
    metrics = dict(result["metrics"])
    samples = [{**s, "task": task} for task, items in result["samples"].items() for s in items]

    # 2. Safety and perplexity with the model in memory.
    model = AutoModelForCausalLM.from_pretrained(weights)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    for subset, metric in (("harmful", "harmful_refusal_rate"), ("benign", "benign_overrefusal_rate")):
        picked = [r for r in rows if r["subset"] == subset][: cfg.limit or None]
        if not picked:
            continue
        outputs = generate(model, tokenizer, [r["prompt"] for r in picked], max_new_tokens=cfg.safety_max_new_tokens,
                           batch_size=cfg.batch_size, seed=cfg.seed)
        refused = [is_refusal(o) for o in outputs]
        metrics[metric] = sum(refused) / len(refused)
        samples += [{"task": subset, "prompt": r["prompt"][-1]["content"], "response": o, "refused": f}
                    for r, o, f in zip(picked, outputs, refused)]
    if heldout_dir is not None and cfg.perplexity_rows:
        held = [json.loads(line)["messages"] for line in open(heldout_dir / "val.jsonl")][: cfg.perplexity_rows]
        nll, n = assistant_nll(model, tokenizer, held, batch_size=cfg.batch_size)
        metrics["perplexity"] = math.exp(nll / n) if n else None

    # 3. Outputs, manifest last.
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    metrics = {k: round(v, 6) if isinstance(v, float) else v for k, v in sorted(metrics.items())}
    record = {"model": name, "metrics": metrics, "limit": cfg.limit, "partial": cfg.limit is not None,
              "generation": result["config"], "counts": _counts(rows, cfg.limit)}
    write_json(out / "metrics.json", record)
    write_json(out / "harness.json", result["raw"])
    with open(out / "samples.jsonl", "w") as fh:
        for s in samples:
            fh.write(json.dumps(s, ensure_ascii=False, sort_keys=True) + "\n")
    inputs = {"model": model_dir, "eval": eval_dir, **({"heldout": heldout_dir} if heldout_dir else {})}
    write_manifest(out, stage=f"evaluate:{name}", params=section(params, "evaluate"), seed=cfg.seed, inputs=inputs,
                   chat_template=tokenizer.chat_template, extra={"metrics": metrics, "partial": cfg.limit is not None})
    log.info("%s: %s", name, metrics)
    return record


def _counts(rows: list[dict], limit: int | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["subset"]] = counts.get(r["subset"], 0) + 1
    return {k: min(v, limit) if limit else v for k, v in sorted(counts.items())}
