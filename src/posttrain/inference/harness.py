"""lm-evaluation-harness on the pipeline's own eval split.

    names = write_tasks(Path("results/data/eval/test.jsonl"), task_dir)
    report = run_harness(Path("results/sft/merged"), names, task_dir, limit=20)

`write_tasks` turns the prepared eval rows into lm-eval task folders (YAML + JSONL, read with
the `json` dataset builder, so nothing is fetched from a hub); `run_harness` runs them with
lm-eval's `hf` model: greedy, zero-shot, the model's own chat template, and returns a small
JSON-safe report (metrics, one record per generation, lm-eval's results, the settings).

Why lm-eval rather than a hand-written loop: its prompt rendering, stop handling, answer
filters and metrics are the ones other people's numbers come from, so an arithmetic score here
is scored the way a published GSM8K score is. The arithmetic tasks therefore copy lm-eval's own
`gsm8k` task (lm_eval/tasks/gsm8k/gsm8k.yaml): the same two filters and the same exact-match
normalisation. The Python helpers below (`extract_answer`, `normalise_answer`,
`answer_matches`) restate that logic for code that scores answers without lm-eval; the tests
check them against lm-eval's own filter and metric.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from posttrain.verifiers.constraints import check_constraint, validate_constraint

log = logging.getLogger(__name__)

ARITHMETIC_TASK = "posttrain_arithmetic"
GSM8K_TASK = "posttrain_gsm8k"
FORMAT_TASK = "posttrain_format"
TASK_PREFIX = "posttrain_"

# lm-eval gsm8k.yaml, filter_list and metric_list (metadata version 3.0), verbatim.
STRICT_REGEX = r"#### (\-?[0-9\.\,]+)"
FLEXIBLE_REGEX = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
# Applied to prediction and target alike, in this order, then lower-cased: "$1,000." == "1000".
ANSWER_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]
# lm-eval's RegexFilter default: what a response with no match is scored as.
INVALID = "[invalid]"
STRICT, FLEXIBLE = "strict-match", "flexible-extract"

# Chat end markers. lm-eval adds the tokenizer's EOS itself; these cover ChatML models whose EOS
# is another token, and a model that opens a new turn instead of closing its own.
STOP_SEQUENCES = ["<|im_end|>", "<|endoftext|>", "<|im_start|>"]

_TASK_VERSION = 1.0
_DATASETS_CACHE = ".datasets_cache"


# --- answer extraction (mirrors lm-eval's gsm8k filters) -------------------------------------


def extract_answer(text: str, mode: str = STRICT) -> str:
    """The answer lm-eval's gsm8k filter `mode` pulls out of `text`, or "[invalid]".

    strict-match: the number after the first "#### ". flexible-extract: the last number-like
    run in the text (so "12 + 7 = 19" gives "19"). Same regexes, group selection and fallback as
    lm-eval's `regex` + `take_first` filters.
    """
    if mode == STRICT:
        pattern, group_select = STRICT_REGEX, 0
    elif mode == FLEXIBLE:
        pattern, group_select = FLEXIBLE_REGEX, -1
    else:
        raise ValueError(f"unknown extraction mode {mode!r}; allowed: {STRICT}, {FLEXIBLE}")
    if not isinstance(text, str):
        text = ""
    matches = re.findall(pattern, text)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        # An alternation yields one tuple per match with the non-participating groups empty.
        match = next((m for m in match if m), INVALID)
    return match.strip()


def normalise_answer(text: str) -> str:
    """lm-eval gsm8k's exact-match normalisation: drop ",", "$", anything up to "#### " and one
    trailing ".", then lower-case."""
    for pattern in ANSWER_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def answer_matches(response: str, target: str, mode: str = STRICT) -> bool:
    """True when the answer extracted from `response` equals `target` after normalisation."""
    return normalise_answer(extract_answer(response, mode)) == normalise_answer(str(target))


# --- format metric --------------------------------------------------------------------------


def format_satisfied(doc: dict, response: str) -> float:
    """1.0 when `response` satisfies the row's constraint (stored as JSON in `doc["constraint"]`)."""
    return float(check_constraint(response, json.loads(doc["constraint"])))


def process_format_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval `process_results` for the format task: one generation in, one 0/1 score out.

    The constraint travels as a JSON string because the `json` dataset builder merges the
    differently-shaped constraint dicts into one Arrow struct, padding each with None-valued
    keys that `check_constraint` rightly rejects as unknown arguments.
    """
    return {"constraint_satisfied": format_satisfied(doc, results[0])}


# --- task writing ---------------------------------------------------------------------------


def _target(row: dict) -> str | None:
    """The gold final answer: `answer`, else whatever follows "####" in the worked `reference`."""
    if row.get("answer") not in (None, ""):
        return str(row["answer"]).strip()
    ref = row.get("reference")
    if isinstance(ref, str) and "####" in ref:
        return ref.split("####")[-1].strip()
    return None


def _user_message(row: dict) -> str:
    prompt = row["prompt"]
    if not prompt or prompt[-1].get("role") != "user":
        raise ValueError(f"eval row {row.get('id')} ({row.get('source')}): the prompt must end with a user turn")
    return prompt[-1]["content"]


def _answer_task_config(name: str, data_file: Path) -> dict[str, Any]:
    return {
        "task": name,
        "dataset_path": "json",
        # The dataset cache lives with the task files so that runs do not depend on, or write
        # to, ~/.cache, and a rewritten JSONL never meets a stale cache from another task dir.
        "dataset_kwargs": {"data_files": {"test": str(data_file)},
                           "cache_dir": str(data_file.parent / _DATASETS_CACHE)},
        "output_type": "generate_until",
        "test_split": "test",
        "num_fewshot": 0,
        # A feature name: lm-eval passes the text through untouched, then applies the chat template.
        "doc_to_text": "question",
        "doc_to_target": "answer",
        "generation_kwargs": {"until": list(STOP_SEQUENCES), "do_sample": False, "temperature": 0.0},
        "metric_list": [{
            "metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
            "ignore_case": True, "ignore_punctuation": False, "regexes_to_ignore": list(ANSWER_IGNORE),
        }],
        "filter_list": [
            {"name": STRICT, "filter": [{"function": "regex", "regex_pattern": STRICT_REGEX},
                                        {"function": "take_first"}]},
            {"name": FLEXIBLE, "filter": [{"function": "regex", "group_select": -1,
                                           "regex_pattern": FLEXIBLE_REGEX},
                                          {"function": "take_first"}]},
        ],
        "repeats": 1,
        "metadata": {"version": _TASK_VERSION},
    }


def _format_task_config(name: str, data_file: Path) -> dict[str, Any]:
    cfg = _answer_task_config(name, data_file)
    del cfg["filter_list"]
    # No gold answer: the constraint is the label, and what lm-eval logs as the target.
    cfg["doc_to_target"] = "constraint"
    cfg["metric_list"] = [{"metric": "constraint_satisfied", "aggregation": "mean", "higher_is_better": True}]
    return cfg


def _write_task(task_dir: Path, name: str, rows: list[dict], config: dict, function_keys: dict[str, str]) -> None:
    data_file = task_dir / f"{name}.jsonl"
    data_file.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000)
    # `!function` is resolved by lm-eval's loader: no local posttrain/harness.py exists next to the
    # YAML, so it falls back to importing the installed package.
    for key, fn in function_keys.items():
        text += f"{key}: !function {fn}\n"
    (task_dir / f"{name}.yaml").write_text(text)


def write_tasks(eval_jsonl: Path, task_dir: Path, limit: int | None = None) -> list[str]:
    """Write lm-eval tasks for the subsets present in `eval_jsonl`; return their names.

    posttrain_arithmetic (subset "arithmetic") and posttrain_gsm8k (any subset whose name contains
    "gsm8k") score the final number like lm-eval's gsm8k; posttrain_format (subset "format") scores
    the fraction of answers meeting `meta.constraint`. Other subsets (harmful, benign) have no
    automatic grader here and are skipped. `limit` keeps the first `limit` rows of each task.
    """
    eval_jsonl, task_dir = Path(eval_jsonl), Path(task_dir).resolve()
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    task_dir.mkdir(parents=True, exist_ok=True)
    # Files from an earlier call would still be indexed by lm-eval's TaskManager, and their
    # dataset cache could outlive a rewrite of the JSONL within the same mtime tick.
    for old in list(task_dir.glob(f"{TASK_PREFIX}*.yaml")) + list(task_dir.glob(f"{TASK_PREFIX}*.jsonl")):
        old.unlink()
    shutil.rmtree(task_dir / _DATASETS_CACHE, ignore_errors=True)

    buckets: dict[str, list[dict]] = {ARITHMETIC_TASK: [], GSM8K_TASK: [], FORMAT_TASK: []}
    with open(eval_jsonl) as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            subset = str(row.get("subset", ""))
            if "gsm8k" in subset:
                name = GSM8K_TASK
            elif subset == "arithmetic":
                name = ARITHMETIC_TASK
            elif subset == "format":
                name = FORMAT_TASK
            else:
                continue
            if len(row["prompt"]) > 1:
                # lm-eval renders one user turn per doc; earlier turns (a system prompt) are dropped.
                log.warning("eval row %s: only the last user turn of a %d-turn prompt is evaluated",
                            row.get("id"), len(row["prompt"]))
            doc = {"id": str(row.get("id")), "subset": subset, "source": str(row.get("source", "")),
                   "question": _user_message(row)}
            if name == FORMAT_TASK:
                constraint = (row.get("meta") or {}).get("constraint")
                validate_constraint(constraint)
                doc["constraint"] = json.dumps(constraint, sort_keys=True)
            else:
                target = _target(row)
                if target is None:
                    raise ValueError(f"eval row {row.get('id')} ({row.get('source')}): no answer or '#### N' reference")
                doc["answer"] = target
            buckets[name].append(doc)

    written = []
    for name, rows in buckets.items():
        if not rows:
            continue
        rows = rows[:limit] if limit is not None else rows
        data_file = task_dir / f"{name}.jsonl"
        if name == FORMAT_TASK:
            _write_task(task_dir, name, rows, _format_task_config(name, data_file),
                        {"process_results": "posttrain.inference.harness.process_format_results"})
        else:
            _write_task(task_dir, name, rows, _answer_task_config(name, data_file), {})
        written.append(name)
    return written


# --- running --------------------------------------------------------------------------------


def _json_safe(obj: Any) -> Any:
    """lm-eval results mix numpy scalars, torch dtypes and "N/A" strings; NaN becomes null."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return _json_safe(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def _stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The model's own EOS ids, the tokenizer's EOS, and the stop markers that are single tokens.

    lm-eval stops a *batch* only when every row has hit a stop string, and decodes with
    skip_special_tokens=True: a row that closed its turn with a token `generate` does not treat as
    EOS goes on generating ("...environments.\nsystem\n\nuser\n" from a model whose
    generation_config EOS is <|endoftext|>), and the removed marker can no longer cut it off.
    Passing these ids as `eos_token_id` makes `generate` pad such rows instead. The model's own
    ids are kept because this list replaces, not extends, its generation_config.
    """
    ids: list[int] = []

    def add(tid):
        if isinstance(tid, int) and tid >= 0 and tid not in ids:
            ids.append(tid)

    own = getattr(generation_config, "eos_token_id", None)
    for tid in (own if isinstance(own, (list, tuple)) else [own]):
        add(tid)
    add(tokenizer.eos_token_id)
    for tok in STOP_SEQUENCES:
        tid = tokenizer.convert_tokens_to_ids(tok)
        # A marker missing from the vocabulary maps to the unknown token (or None): the round
        # trip tells the two apart even where the unknown token is itself a marker.
        if isinstance(tid, int) and tokenizer.convert_ids_to_tokens(tid) == tok:
            add(tid)
    return ids


def _samples(task: str, logged: list[dict]) -> list[dict]:
    """One record per doc: lm-eval logs each doc once per filter, so merge them.

    `correct` is the headline verdict: strict-match for the answer tasks, the constraint for the
    format task, and for other (standard lm-eval) tasks the first 0/1 metric of the first filter.
    """
    by_doc: dict[int, dict] = {}
    for s in logged:
        rec = by_doc.get(s["doc_id"])
        if rec is None:
            args = s["arguments"][0]
            rec = by_doc[s["doc_id"]] = {
                "id": s["doc"].get("id") if isinstance(s["doc"], dict) else None,
                "prompt": args[0] if isinstance(args, (list, tuple)) else args,
                "response": s["resps"][0][0] if s["resps"] and s["resps"][0] else None,
                "target": s["target"],
            }
        if task == FORMAT_TASK:
            rec["constraint"] = json.loads(s["doc"]["constraint"])
            rec["correct"] = bool(s["constraint_satisfied"])
        elif task in (ARITHMETIC_TASK, GSM8K_TASK):
            rec.setdefault("extracted", {})[s["filter"]] = s["filtered_resps"][0]
            rec.setdefault("correct_by_filter", {})[s["filter"]] = bool(s["exact_match"])
            if s["filter"] == STRICT:
                rec["correct"] = bool(s["exact_match"])
        else:
            scores = {m: s[m] for m in s.get("metrics", []) if m in s}
            rec.setdefault("metrics_by_filter", {})[s["filter"]] = scores
            if "correct" not in rec:
                binary = [v for v in scores.values() if isinstance(v, (bool, int, float)) and v in (0, 1)]
                rec["correct"] = bool(binary[0]) if binary else None
    return [_json_safe(by_doc[k]) for k in sorted(by_doc)]


_METRIC_KEYS = {
    # (task, lm-eval "metric,filter") -> report key
    (ARITHMETIC_TASK, f"exact_match,{STRICT}"): "arithmetic_accuracy",
    (ARITHMETIC_TASK, f"exact_match,{FLEXIBLE}"): "arithmetic_accuracy_flexible",
    (GSM8K_TASK, f"exact_match,{STRICT}"): "gsm8k_exact_match",
    (GSM8K_TASK, f"exact_match,{FLEXIBLE}"): "gsm8k_exact_match_flexible",
    (FORMAT_TASK, "constraint_satisfied,none"): "format_accuracy",
}

# Facts about the machine and the moment, not the evaluation: without them a rerun of the same
# model on the same data gives the same raw report. Library versions stay.
_VOLATILE_RAW_KEYS = ("date", "pretty_env_info", "git_hash", "upper_git_hash", "total_evaluation_time_seconds")


def _metrics(per_task: dict) -> dict[str, float]:
    """Canonical names for our tasks; "<task>_<metric>[_<filter>]" for standard lm-eval tasks."""
    metrics: dict[str, float] = {}
    for task, values in per_task.items():
        for key, value in values.items():
            name = _METRIC_KEYS.get((task, key))
            if name is None:
                if task.startswith(TASK_PREFIX) or "," not in key or "_stderr," in key:
                    continue
                metric, _, filt = key.partition(",")
                name = f"{task}_{metric}" + ("" if filt == "none" else f"_{filt}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                metrics[name] = float(value)
    return metrics


def run_harness(model_dir: Path, tasks: list[str], task_dir: Path, *, adapter_dir: Path | None = None,
                model=None, limit: int | None = None, max_new_tokens: int = 64, batch_size: int = 8,
                seed: int = 0, think_end_token: str | None = None) -> dict:
    """Run lm-eval's `hf` model on `tasks` (written by `write_tasks` into `task_dir`).

    Greedy, with the model's own chat template; `adapter_dir` loads a PEFT adapter on top of
    `model_dir` (and its tokenizer, when it saved one). `model`: the model already loaded from
    those folders (e.g. with the adapter merged), used as it is instead of loading them again.
    `think_end_token` (`</think>`): each answer is scored on what follows its last occurrence, as
    lm-eval's own `think_end_token` does for reasoning models.
    `limit` keeps the first `limit` docs of
    each task. A name in `tasks` that `task_dir` does not define is looked up among lm-eval's own
    tasks (gsm8k, ifeval, ...), with that task's default shots; its dataset comes from the hub
    (or, with HF_DATASETS_OFFLINE=1, the datasets cache). Our own tasks and local model folders
    open no connection, online or not. Returns {"metrics", "samples", "raw", "config"}; metrics
    and samples repeat exactly for the same model, data, settings and hardware.
    """
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from posttrain.inference.harness_model import RefillingHFLM

    if not tasks:
        raise ValueError("no tasks to run")
    # lm-eval reads a limit below 1 as a fraction of each task; here it is always a row count.
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    model_dir, task_dir = Path(model_dir).resolve(), Path(task_dir).resolve()
    tokenizer_dir = model_dir
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir).resolve()
        # The SFT stage saves the tokenizer (and template) it trained with next to the adapter.
        if (adapter_dir / "tokenizer_config.json").is_file():
            tokenizer_dir = adapter_dir
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Without a loaded model (standalone use): float32 on CPU. The evaluation stage passes its
    # model, loaded in evaluate.dtype (posttrain.inference.dtype).
    dtype = "auto" if device == "cuda" else "float32"

    model_args: dict[str, Any] = {"pretrained": str(model_dir), "tokenizer": str(tokenizer_dir),
                                  "dtype": dtype, "trust_remote_code": False}
    if adapter_dir is not None and model is None:
        model_args["peft"] = str(adapter_dir)
    # Standard task names (gsm8k, ifeval, ...) need lm-eval's own task index, which takes seconds
    # to build and could shadow ours; it is only loaded when asked for.
    local = {p.stem for p in task_dir.glob(f"{TASK_PREFIX}*.yaml")}
    standard = [t for t in tasks if t not in local]
    if model is not None:
        lm = RefillingHFLM(pretrained=model, tokenizer=str(tokenizer_dir), batch_size=batch_size,
                           think_end_token=think_end_token)
    else:
        lm = RefillingHFLM(device=device, batch_size=batch_size, think_end_token=think_end_token, **model_args)

    gen_kwargs = {"max_gen_toks": max_new_tokens, "do_sample": False, "temperature": 0.0,
                  "eos_token_id": _stop_token_ids(lm.tokenizer, getattr(lm.model, "generation_config", None))}
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=bool(standard)),
        # Ours are zero-shot in their YAML; standard tasks keep their own default shots.
        num_fewshot=None,
        limit=limit,
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        gen_kwargs=gen_kwargs,
        log_samples=True,
        # Any value > 0 turns stderrs on. Means (all of ours) get the closed form; the few
        # metrics lm-eval bootstraps use fixed per-chunk seeds, so 1000 draws stay reproducible.
        bootstrap_iters=1000,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )

    metrics = _metrics(results["results"])
    samples = {task: _samples(task, logged) for task, logged in results.get("samples", {}).items()}
    n_docs = {task: len(s) for task, s in samples.items()}
    raw = _json_safe({k: v for k, v in results.items() if k != "samples" and k not in _VOLATILE_RAW_KEYS})
    config = {
        "model_dir": str(model_dir),
        "adapter_dir": str(adapter_dir) if adapter_dir is not None else None,
        "tokenizer_dir": str(tokenizer_dir),
        "tasks": list(tasks),
        "limit": limit,
        "n_docs": n_docs,
        "generation": {"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": 0.0,
                       "until": list(STOP_SEQUENCES), "eos_token_id": gen_kwargs["eos_token_id"],
                       "apply_chat_template": True},
        "num_fewshot": dict(results.get("n-shot", {})),
        "batch_size": batch_size,
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
    }
    return {"metrics": metrics, "samples": samples, "raw": raw, "config": config}
