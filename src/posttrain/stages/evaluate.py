"""Evaluate stage: the eval suite on one model the DAG made.

    posttrain evaluate --model results/sft --name sft --eval-data results/data/eval \\
        --heldout results/data/sft --out results/eval/sft [--params params.yaml ...]

- lm-evaluation-harness on custom local tasks written from the eval split (arithmetic with
  gsm8k-style strict/flexible extraction, instruction format, gsm8k when present), greedy, with the
  model's chat template; an adapter is merged into its base first, as it is served;
- safety: refusal rate on harmful prompts and over-refusal rate on benign-but-edgy prompts
  (rule-based refusal detector on greedy generations);
- why arithmetic answers fail: the share set up right (`arithmetic_setup_rate`: the answer's last
  calculation, done right, gives the gold answer) and, averaged over the answers, the share of an
  answer's stated calculations that are right (`arithmetic_calculation_rate`): the registry's
  `setup` and `calculation` rewards;
- perplexity of the assistant turns of held-out SFT data;
- with reward models: each aspect's mean normalised score of the model's responses
  (`helpful_rm_score`, `safety_rm_score`) and the win rate against the reference model's
  responses to the same prompts (`win_rate_vs_reference`).
Writes metrics.json (canonical names, the model's parameters and weight size), harness.json (raw
harness results), samples.jsonl (every generation with its verdict), run.json (greedy
generation speed on this machine: wall-clock, so kept out of the metrics) and manifest.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path

from posttrain.config import Params, section
from posttrain.core.commands import pairs_arg, params_arg
from posttrain.core.manifest import input_hash, portable, require_manifest, write_json, write_manifest, write_run_record
from posttrain.export import gptq_format
from posttrain.inference import dtype as inference_dtype
from posttrain.inference import harness
from posttrain.inference.generation import assistant_nll, generate, generation_threads
from posttrain.models import chat
from posttrain.models import sources as models
from posttrain.models.artifacts import resolve_model
from posttrain.models.head import contiguous_head_input
from posttrain.verifiers import rewards
from posttrain.verifiers.refusal import is_refusal

log = logging.getLogger(__name__)


def _dequantized_copy(weights: Path, out: Path) -> dict | None:
    """A float32 copy to evaluate, or None. A GPTQ model evaluated on a CPU runs on its dequantized
    weights (posttrain.export.gptq_format):
    the int4 CPU kernels decode batches dozens of times slower, and the quality the 4-bit
    weights keep is the same. On a GPU the kernels run as served. A GGUF export is always
    evaluated dequantized: transformers reads GGUF weights only that way."""
    import torch
    from transformers import AutoTokenizer

    gguf = models.gguf_file(weights)
    if gguf is not None:
        folder = out.parent / f".{out.name}-dequantized"
        if folder.exists():
            shutil.rmtree(folder)
        model = models.load_gguf(gguf).model
        adapter = models.gguf_adapter_file(weights)
        if adapter is not None:              # a LoRA served beside the base: applied as llama.cpp does
            from posttrain.export import gguf_adapter

            gguf_adapter.apply(model, adapter)
        model.save_pretrained(folder)
        # the export's own tokenizer files and sampling defaults, as the harness loads them
        AutoTokenizer.from_pretrained(weights).save_pretrained(folder)
        shutil.copy(weights / "generation_config.json", folder / "generation_config.json")
        return {"method": "gguf", "file": gguf.name, **({"adapter": adapter.name} if adapter else {}),
                "evaluated_as": "dequantized float32 weights", "folder": folder}
    q = gptq_format.quantization_config(weights)
    if q is None or torch.cuda.is_available():
        return None
    folder = gptq_format.dequantize_folder(weights, out.parent / f".{out.name}-dequantized")
    return {"method": q["quant_method"], "bits": q["bits"], "group_size": q.get("group_size"),
            "evaluated_as": "dequantized float32 weights (CPU)", "folder": folder}


def _load(weights: Path, adapter: Path | None, dtype: str):
    """The model to evaluate, loaded once for every part of the suite, in `dtype` (resolved
    `evaluate.dtype`: bfloat16 on a CPU that multiplies it natively, else float32; the stored
    dtype on a GPU). An adapter is merged into the float32 weights first, as the model is served:
    unmerged, each of its LoRA layers adds two small matmuls to every decoding step (slower
    sampling on the demo model: measured by benchmarks/rl_step.py; figures in
    benchmarks/RESULTS.md, "Training throughput")."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(weights, dtype="auto" if cuda else torch.float32,
                                                 **({"device_map": "cuda"} if cuda else {}))
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if dtype != "auto":
        model = model.to(inference_dtype.torch_dtype(dtype))
    return contiguous_head_input(model.eval())


def main(params: Params, model_dir: Path, name: str, eval_dir: Path, heldout_dir: Path | None, out: Path,
         reward_dirs: dict[str, Path] | None = None, reference: Path | None = None) -> dict:
    with generation_threads():   # the same numbers whichever tool runs the stage
        return _evaluate(params, model_dir, name, eval_dir, heldout_dir, out, reward_dirs, reference)


def _evaluate(params: Params, model_dir: Path, name: str, eval_dir: Path, heldout_dir: Path | None, out: Path,
              reward_dirs: dict[str, Path] | None, reference: Path | None) -> dict:
    from transformers import AutoTokenizer

    cfg = params.evaluate
    weights, adapter, manifest = resolve_model(model_dir)
    require_manifest(eval_dir, "prepare-data --kind eval")
    tokenizer = AutoTokenizer.from_pretrained(adapter or weights)
    if chat.template_hash(tokenizer.chat_template) != manifest.get("chat_template_sha256"):
        raise ValueError(f"{model_dir}: the tokenizer's chat template differs from the one its manifest records; "
                         f"the model would be evaluated with a template it was not trained with")
    rows = [json.loads(line) for line in open(eval_dir / "test.jsonl")]
    stored, quantized = weights, _dequantized_copy(weights, out)
    if quantized:
        weights = quantized["folder"]

    # 1. Harness tasks (arithmetic, format, gsm8k) from the eval split.
    task_dir = out.parent / f".{out.name}-tasks"
    if task_dir.exists():
        shutil.rmtree(task_dir)
    tasks = harness.write_tasks(eval_dir / "test.jsonl", task_dir, limit=cfg.limit)
    dtype = inference_dtype.resolve(cfg.dtype)
    model = _load(weights, adapter, dtype)
    result = harness.run_harness(weights, tasks + list(cfg.harness_tasks), task_dir, adapter_dir=adapter,
                                 model=model, limit=cfg.limit, max_new_tokens=cfg.max_new_tokens,
                                 batch_size=cfg.batch_size, seed=cfg.seed, think_end_token=cfg.think_end_token)
    shutil.rmtree(task_dir, ignore_errors=True)
    metrics = dict(result["metrics"])
    samples = [{**s, "task": task} for task, items in result["samples"].items() for s in items]
    metrics.update(_arithmetic_breakdown(samples, {r["id"]: r for r in rows}))

    # 2. Safety and perplexity with the same model; its size, and how fast it generates.
    metrics["parameters"] = sum(p.numel() for p in model.parameters())
    if getattr(model, "hf_quantizer", None) is not None and manifest.get("parameters"):
        metrics["parameters"] = manifest["parameters"]  # packed 4-bit tensors count 8 weights per element
    metrics["weights_mb"] = models.weights_mb(stored)
    timings = {"generated_tokens": 0, "generation_seconds": 0.0, "batch_size": cfg.batch_size}
    # Harmful and benign prompts are answered in one pass: a refilled batch stays full (40 of each
    # would leave 24 of 64 places empty), and each answer is the one it would get alone.
    safety = {"harmful": "harmful_refusal_rate", "benign": "benign_overrefusal_rate"}
    picked = [r for subset in safety for r in [r for r in rows if r["subset"] == subset][: cfg.limit or None]]
    if picked:
        started = time.perf_counter()
        outputs = generate(model, tokenizer, [r["prompt"] for r in picked], max_new_tokens=cfg.safety_max_new_tokens,
                           batch_size=cfg.batch_size, seed=cfg.seed, progress="safety")
        timings["generation_seconds"] += time.perf_counter() - started
        timings["generated_tokens"] += sum(len(tokenizer(o, add_special_tokens=False).input_ids) for o in outputs)
        refused = [is_refusal(o) for o in outputs]
        for subset, metric in safety.items():
            flags = [f for r, f in zip(picked, refused) if r["subset"] == subset]
            if flags:
                metrics[metric] = sum(flags) / len(flags)
        samples += [{"task": r["subset"], "id": r["id"], "prompt": r["prompt"][-1]["content"], "response": o,
                     "refused": f} for r, o, f in zip(picked, outputs, refused)]
    if heldout_dir is not None and cfg.perplexity_rows:
        held = [json.loads(line)["messages"] for line in open(heldout_dir / "val.jsonl")][: cfg.perplexity_rows]
        nll, n = assistant_nll(model, tokenizer, held)
        metrics["perplexity"] = math.exp(nll / n) if n else None

    del model
    if quantized:
        shutil.rmtree(quantized.pop("folder"), ignore_errors=True)
    # 3. Reward-model scores of the responses, and the win rate against the reference model.
    if reward_dirs:
        metrics.update(_reward_metrics(samples, rows, reward_dirs, reference, name, cfg, dtype))

    # 4. Outputs, manifest last.
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    metrics = {k: round(v, 6) if isinstance(v, float) else v for k, v in sorted(metrics.items())}
    record = {"model": name, "metrics": metrics, "dtype": dtype, "limit": cfg.limit, "partial": cfg.limit is not None,
              "generation": result["config"], "counts": _counts(rows, cfg.limit),
              **({"quantized": quantized} if quantized else {})}
    # Both name the folders they read: relative to the project, so two clones write the same bytes.
    write_json(out / "metrics.json", portable(record))
    write_json(out / "harness.json", portable(result["raw"]))
    # Wall-clock numbers live in the run record, apart from metrics.json, which repeats exactly.
    if timings["generation_seconds"]:
        timings["generation_tokens_per_second"] = timings["generated_tokens"] / timings["generation_seconds"]
    write_run_record(out, **timings)
    with open(out / "samples.jsonl", "w") as fh:
        for s in samples:
            fh.write(json.dumps(s, ensure_ascii=False, sort_keys=True) + "\n")
    inputs = {"model": model_dir, "eval": eval_dir, **({"heldout": heldout_dir} if heldout_dir else {}),
              **{f"reward:{a}": d for a, d in (reward_dirs or {}).items()},
              **({"reference": reference} if reference else {})}
    write_manifest(out, stage=f"evaluate:{name}", params=section(params, "evaluate"), seed=cfg.seed, inputs=inputs,
                   chat_template=tokenizer.chat_template, extra={"metrics": metrics, "partial": cfg.limit is not None})
    log.info("%s: %s", name, metrics)
    return record


def _subset_of(sample: dict, by_id: dict) -> str | None:
    if sample["task"] in ("harmful", "benign"):
        return sample["task"]
    row = by_id.get(sample.get("id"))
    return row["subset"] if row else None


def _reward_metrics(samples: list[dict], rows: list[dict], reward_dirs: dict[str, Path], reference: Path | None,
                    name: str, cfg, dtype: str) -> dict:
    """Scores every chosen response with each aspect's reward model (stored on the sample) and
    returns `<aspect>_rm_score` and `win_rate_vs_reference`."""
    from posttrain.models.reward_model import RewardModel
    from posttrain.models.reward_trunk import score_aspects

    by_id = {r["id"]: r for r in rows}
    metrics: dict = {}
    ref_samples, ref_inputs = None, {}
    if reference is not None:
        ref_inputs = require_manifest(reference, f"evaluate:{cfg.reference}").get("inputs", {})
        ref_samples = {(s["task"], s.get("id") or s["prompt"]): s
                       for s in map(json.loads, open(reference / "samples.jsonl"))}
    chosen = {}
    for aspect in sorted(reward_dirs):
        subsets = cfg.rm_subsets.get(aspect)
        picked = [s for s in samples if s.get("response") is not None and
                  (_subset_of(s, by_id) in subsets if subsets else _subset_of(s, by_id) != "arithmetic")]
        if picked:
            chosen[aspect] = picked
    requests = {a: ([_prompt_of(s, by_id) for s in picked], [s["response"] for s in picked])
                for a, picked in chosen.items()}
    all_scores = score_aspects({a: reward_dirs[a] for a in chosen}, requests, batch_size=cfg.reward_batch_size,
                               dtype=dtype)
    for aspect, picked in chosen.items():
        folder, scores = reward_dirs[aspect], all_scores[aspect]
        for s, v in zip(picked, scores):
            s.setdefault("rm_scores", {})[aspect] = round(v, 6)
        metrics[f"{aspect}_rm_score"] = sum(scores) / len(scores)
        if aspect != cfg.win_rate_aspect:
            continue
        if ref_samples is None:  # this model is the reference: every comparison is a tie
            metrics["win_rate_vs_reference"] = 0.5
            for s in picked:
                s["win_vs_reference"] = 0.5
            continue
        pairs = [(s, ref_samples.get((s["task"], s.get("id") or s["prompt"]))) for s in picked]
        pairs = [(s, r) for s, r in pairs if r is not None and r.get("response") is not None]
        if not pairs:
            raise ValueError(f"{reference}: no responses to the same prompts as {name}; re-run its evaluation")
        # The reference's own evaluation stored its responses' scores; they are reused when that
        # evaluation used this very reward model (same manifest hash), else scored again.
        stored = [r.get("rm_scores", {}).get(aspect) for _, r in pairs]
        same_rm = ref_inputs.get(f"reward:{aspect}", {}).get("sha256") == input_hash(folder)
        if same_rm and all(v is not None for v in stored):
            ref_scores = stored
        else:
            ref_scores = RewardModel.load(folder, dtype=dtype).score([_prompt_of(r, by_id) for _, r in pairs],
                                                        [r["response"] for _, r in pairs],
                                                        batch_size=cfg.reward_batch_size)
        wins = [_win(s["response"], s["rm_scores"][aspect], r["response"], round(v, 6))
                for (s, r), v in zip(pairs, ref_scores)]
        for (s, _), w in zip(pairs, wins):   # per prompt, for the report's paired tests
            s["win_vs_reference"] = w
        metrics["win_rate_vs_reference"] = sum(wins) / len(wins)
    return metrics


# A wrong arithmetic answer is wrong in one of two ways, and training fixes them differently:
# the problem was set up wrong (numbers or operations: wording the model misreads) or a sum in
# it was done wrong (arithmetic the model lacks). Accuracy alone cannot tell which one a stage
# moved.
ARITHMETIC_BREAKDOWN = {"arithmetic_setup_rate": "setup", "arithmetic_calculation_rate": "calculation"}


def _arithmetic_breakdown(samples: list[dict], by_id: dict) -> dict:
    """The mean `setup` and `calculation` reward of the arithmetic task's greedy answers."""
    picked = [s for s in samples if s["task"] == harness.ARITHMETIC_TASK]
    if not picked:
        return {}
    prompts = [_prompt_of(s, by_id) for s in picked]
    responses = [s["response"] for s in picked]
    golds = [s["target"] for s in picked]
    out = {}
    for metric, reward in ARITHMETIC_BREAKDOWN.items():
        per_sample = rewards.build({"name": reward})(prompts, responses, answer=golds)
        for s, x in zip(picked, per_sample):   # per prompt, for the report's paired tests
            s.setdefault("arithmetic_rewards", {})[reward] = x
        scores = [x for x in per_sample if x is not None]
        out[metric] = sum(scores) / len(scores) if scores else None
    return out


def _win(response: str, score: float, reference_response: str, reference_score: float) -> float:
    """1 when the reward model prefers the response, 0.5 for a tie, 0 otherwise. The same text is
    a tie whatever its two scores: scored in batches of other rows, identical texts can differ in
    the last rounded digit, which would otherwise decide a comparison of nothing."""
    if response == reference_response or score == reference_score:
        return 0.5
    return 1.0 if score > reference_score else 0.0


def _prompt_of(sample: dict, by_id: dict) -> list[dict]:
    row = by_id.get(sample.get("id"))
    if row is not None:
        return row["prompt"]
    return [{"role": "user", "content": sample["prompt"]}]


def _counts(rows: list[dict], limit: int | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["subset"]] = counts.get(r["subset"], 0) + 1
    return {k: min(v, limit) if limit else v for k, v in sorted(counts.items())}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="run the eval suite on one model")
    p.add_argument("--model", type=Path, required=True, help="an artifact folder: results/base, results/sft, ...")
    p.add_argument("--name", required=True, help="the model's name in the report")
    p.add_argument("--eval-data", type=Path, required=True, help="prepared eval data (results/data/eval)")
    p.add_argument("--heldout", type=Path, help="prepared SFT data whose val split is scored for perplexity")
    p.add_argument("--reward", action="append", default=[], metavar="ASPECT=DIR",
                   help="a reward model (results/reward/ASPECT) that scores the responses; repeatable")
    p.add_argument("--reference", type=Path, help="the reference model's evaluation, for win_rate_vs_reference")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: main(params, a.model, a.name, a.eval_data, a.heldout, a.out,
                                              reward_dirs=pairs_arg(a.reward, "--reward"), reference=a.reference))
