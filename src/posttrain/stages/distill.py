"""Distillation stages: a smaller student that inherits the teacher's skills.

    posttrain student-base --base results/base --out results/distill/student_base
    posttrain distill-samples --teacher results/rl/reasoning --prompts results/data/prompts \\
        --out results/distill/samples
    posttrain distill --student results/distill/student_base --data results/data/sft \\
        --samples results/distill/samples --teacher results/rl/reasoning --out results/distill/student
    posttrain distill --baseline --student results/distill/student_base --data results/data/sft \\
        --out results/distill/student_sft

- student-base: the student before training: a depth-pruned copy of the base model or of the
  teacher (`student.prune_from`; every k-th layer, listed layers, or the least important; offline) or a
  configured smaller model that shares the base's tokenizer,
  saved with the base's chat template.
- distill-samples: rejection sampling (R1-style): the teacher answers the prompt set
  (`distill.sampling`), the verifiers score every answer, and the accepted ones become SFT rows
  (train.jsonl, `messages`), with the rejected ones and accept/reject counts beside them. A
  reusable artifact: any SFT run can train on it.
- distill: the student fine-tuned on the accepted answers (plus the original SFT rows when
  `include_sft_data`), with `level: logit` also matching the teacher's token distributions
  (posttrain.training.distillation). `--baseline` trains the same student on the original SFT data alone
  with the same settings: what distillation is measured against.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

from posttrain.config import DistillParams, Params, SftParams
from posttrain.core.commands import params_arg
from posttrain.core.manifest import require_manifest, write_json, write_manifest
from posttrain.inference import dtype as inference_dtype
from posttrain.models import chat, pruning
from posttrain.models import sources as models
from posttrain.models.head import contiguous_head_input
from posttrain.rl import rejection_sampling
from posttrain.verifiers import rewards

log = logging.getLogger(__name__)


def _cfg(params: Params) -> DistillParams:
    if params.distill is None:
        raise ValueError("distill is null in these params: distillation is off")
    return params.distill


def _section(params: Params, *parts: str) -> dict:
    """The part of the distill section a stage depends on (so e.g. a sampling change does not
    retrain the baseline student)."""
    dumped = _cfg(params).model_dump(mode="json")
    return {k: dumped[k] for k in parts} if parts else dumped


# --- the student before training ----------------------------------------------------------------


def student_base(params: Params, base_dir: Path, out: Path, calibration_dir: Path | None = None,
                 teacher_dir: Path | None = None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = _cfg(params).student
    base_manifest = require_manifest(base_dir, "base-model")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    n_base = base_manifest["parameters"]
    if cfg.model == "prune":
        pruned_dir = base_dir
        if cfg.prune_from == "teacher":
            if teacher_dir is None:
                raise ValueError("distill.student.prune_from: teacher prunes the teacher's layers: pass --teacher")
            require_manifest(teacher_dir, "the teacher model")
            pruned_dir = teacher_dir
        base = AutoModelForCausalLM.from_pretrained(models.weights_dir(pruned_dir))
        n_layers = base.config.get_text_config().num_hidden_layers
        source = {"kind": "depth-pruned", "from": str(pruned_dir), "layers_of": n_layers}
        if cfg.drop_least_important:
            if calibration_dir is None:
                raise ValueError("distill.student.drop_least_important measures each layer on SFT validation rows: "
                                 "pass --calibration results/data/sft")
            require_manifest(calibration_dir, "prepare-data --kind sft")
            rows = [r["messages"] for r in map(json.loads, open(calibration_dir / "val.jsonl"))
                    if cfg.calibration_subsets is None or r.get("subset") in cfg.calibration_subsets]
            if not rows:
                raise ValueError(f"distill.student.calibration_subsets {cfg.calibration_subsets}: no validation rows "
                                 f"of those subsets in {calibration_dir / 'val.jsonl'}")
            ranking_dtype = inference_dtype.resolve(cfg.ranking_dtype)
            with inference_dtype.weights_in(base, inference_dtype.torch_dtype(ranking_dtype, default=None)):
                importance = pruning.layer_importance(base, tokenizer, rows[: cfg.calibration_rows])
            source["ranked_in"] = ranking_dtype
            keep = pruning.least_important_dropped(importance, cfg.drop_least_important)
            source["perplexity_without_layer"] = [round(v, 4) for v in importance]
        else:
            keep = cfg.layers or pruning.kept_layers(n_layers, cfg.keep_every)
        model = pruning.depth_pruned(base, keep)
        del base
        source["layers_kept"] = keep
        log.info("student: layers %s of %d", keep, n_layers)
    else:  # the base is not loaded: a 30B teacher's base need not fit in this process
        resolved = models.resolve(cfg.model, revision=cfg.revision, trust_remote_code=params.model.trust_remote_code)
        if resolved.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"distill.student.model {cfg.model!r} has a different tokenizer from the base model; "
                             f"the student must read and write the same tokens as its teacher")
        model, source = resolved.model, resolved.source
    n_params = models.count_parameters(model)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # the base's tokenizer and chat template
    (out / "README.md").write_text(
        f"---\nlibrary_name: transformers\ntags: [posttrain, distillation, student]\n---\n# Student (untrained)\n\n"
        f"Made by `posttrain student-base` from `{base_manifest['params']['base']}`: "
        f"{_describe(source)}.\n\n- parameters: {n_params:,} ({n_params / n_base:.0%} of the base)\n\n"
        f"Exact parameters, inputs and library versions: `manifest.json`.\n")
    return write_manifest(out, stage="student-base", params={"base": base_manifest["params"]["base"],
                                                             "student": cfg.model_dump(mode="json")},
                          seed=params.model.seed,
                          inputs={"base": base_dir, **({"calibration": calibration_dir} if calibration_dir else {}),
                                  **({"teacher": teacher_dir} if teacher_dir else {})},
                          chat_template=tokenizer.chat_template,
                          extra={"source": source, "architecture": model.config.model_type, "parameters": n_params,
                                 "base_parameters": n_base})


def _describe(source: dict) -> str:
    if source.get("kind") == "depth-pruned":
        return f"layers {source['layers_kept']} of its {source['layers_of']}"
    return f"{source.get('kind')} model `{source.get('id') or source.get('path') or source.get('name')}`"


# --- rejection sampling -----------------------------------------------------------------------


def samples(params: Params, teacher_dir: Path, prompts_dir: Path, out: Path) -> dict:
    from posttrain.inference.generation import generation_threads

    with generation_threads():   # the same samples whichever tool runs the stage
        return _samples(params, teacher_dir, prompts_dir, out)


def _samples(params: Params, teacher_dir: Path, prompts_dir: Path, out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.rl.prompts import prompt_rows

    cfg = _cfg(params).sampling
    teacher_manifest = require_manifest(teacher_dir, "a training stage")
    require_manifest(prompts_dir, "prepare-data --kind prompts")
    weights = models.weights_dir(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    if chat.template_hash(tokenizer.chat_template) != teacher_manifest.get("chat_template_sha256"):
        raise ValueError(f"{teacher_dir}: the tokenizer's chat template differs from the one its manifest records")
    rows = prompt_rows(prompts_dir / "train.jsonl", cfg.subsets)
    if not rows:
        raise ValueError(f"{prompts_dir}/train.jsonl has no prompts of subsets {cfg.subsets} "
                         f"(distill.sampling.subsets)")
    verify = rewards.combine([r.model_dump(exclude={"aspect"}, exclude_none=True) for r in cfg.rewards])

    # 1. The teacher answers every prompt per_prompt times; the verifiers keep what passes.
    dtype = inference_dtype.resolve(cfg.dtype)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=inference_dtype.torch_dtype(dtype))
    contiguous_head_input(model.requires_grad_(False))   # sampling only: no gradients, one product per head call
    sampled = rejection_sampling.sample(
        model, tokenizer, rows, verify, per_prompt=cfg.per_prompt, keep_per_prompt=cfg.keep_per_prompt,
        min_reward=cfg.min_reward, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size, seed=cfg.seed, progress="teacher samples")
    del model
    report = sampled.report()
    if not sampled.accepted:
        raise ValueError(f"rejection sampling accepted none of {report['samples']} teacher answers (min_reward "
                         f"{cfg.min_reward}); an empty dataset cannot train a student. Rejections: "
                         f"{dict(sum(sampled.counts.values(), Counter()))}")

    # 2. Outputs, manifest last.
    if out.exists():
        shutil.rmtree(out)
    sampled.write(out)
    report["dtype"] = dtype
    write_json(out / "metrics.json", report)
    log.info(rejection_sampling.summary(report))
    return write_manifest(out, stage="distill-samples", params=_section(params, "sampling"), seed=cfg.seed,
                          inputs={"teacher": teacher_dir, "prompts": prompts_dir},
                          chat_template=tokenizer.chat_template,
                          extra={"metrics": report})


# --- training the student -----------------------------------------------------------------------


def student(params: Params, student_dir: Path, data_dir: Path, out: Path, *, samples_dir: Path | None = None,
            teacher_dir: Path | None = None, baseline: bool = False) -> dict:
    from posttrain.training import sft
    from posttrain.training.distillation import Teacher

    cfg = _cfg(params)
    if baseline:
        section = _section(params, *SftParams.model_fields)  # the training fields, not sampling or KD
        card = {"title": "Student trained by plain SFT", "tags": ["distillation", "baseline", "trl"],
                "intro": "The student architecture fine-tuned by `posttrain distill --baseline` on the original SFT "
                         "data, with the distilled student's training settings: what distillation is measured against."}
        return sft.train(cfg, "distill-baseline", section, student_dir, data_dir, out, card=card)
    if samples_dir is None:
        raise ValueError("posttrain distill needs --samples (the distill-samples output) unless --baseline")
    require_manifest(samples_dir, "distill-samples")
    teacher = None
    if cfg.level == "logit":
        if teacher_dir is None:
            raise ValueError("distill.level: logit needs --teacher (the teacher model's folder)")
        require_manifest(teacher_dir, "a training stage")
        teacher = Teacher(teacher_dir, weight=cfg.kd_weight, beta=cfg.kd_beta, temperature=cfg.kd_temperature)
    # Without the SFT rows, the samples alone train; the SFT data still provides validation.
    extra = [samples_dir / "train.jsonl"]
    card = {"title": "Distilled student", "tags": ["distillation", "trl"],
            "intro": f"The student fine-tuned by `posttrain distill` ({cfg.level}-level) on the teacher's accepted "
                     f"answers{' and the original SFT data' if cfg.include_sft_data else ''}"
                     f"{f', matching the token distributions of `{teacher_dir}`' if teacher else ''}.",
            "rows": {"level": cfg.level, **({"kd weight, beta, temperature":
                                             f"{cfg.kd_weight}, {cfg.kd_beta}, {cfg.kd_temperature}"}
                                            if teacher else {})}}
    return sft.train(cfg, "distill", _section(params), student_dir, data_dir, out, extra_train=extra,
                     teacher=teacher, card=card, inputs={"samples": samples_dir,
                                                         **({"teacher": teacher_dir} if teacher else {})},
                     use_data_rows=cfg.include_sft_data)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("student-base", help="the untrained distillation student (a depth-pruned base, or "
                                            "distill.student.model)")
    p.add_argument("--base", type=Path, required=True, help="base model folder (results/base)")
    p.add_argument("--calibration", type=Path, help="prepared SFT data whose val rows rank layers "
                                                   "(distill.student.drop_least_important)")
    p.add_argument("--teacher", type=Path, help="the teacher, whose layers are pruned (distill.student.prune_from: "
                                                 "teacher)")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: student_base(params, a.base, a.out, calibration_dir=a.calibration,
                                                      teacher_dir=a.teacher))

    p = sub.add_parser("distill-samples", help="rejection sampling: the teacher's verified answers as SFT rows")
    p.add_argument("--teacher", type=Path, required=True, help="the teacher model (results/rl/NAME or results/sft)")
    p.add_argument("--prompts", type=Path, required=True, help="prepared prompts (results/data/prompts)")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: samples(params, a.teacher, a.prompts, a.out))

    p = sub.add_parser("distill", help="train the student on the teacher's answers (and logits), or --baseline")
    p.add_argument("--student", type=Path, required=True, help="the untrained student (results/distill/student_base)")
    p.add_argument("--data", type=Path, required=True, help="prepared SFT data (results/data/sft)")
    p.add_argument("--samples", type=Path, help="the distill-samples output (not with --baseline)")
    p.add_argument("--teacher", type=Path, help="the teacher model, for distill.level: logit")
    p.add_argument("--baseline", action="store_true", help="plain SFT on --data with the same settings")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: student(params, a.student, a.data, a.out, samples_dir=a.samples,
                                                 teacher_dir=a.teacher, baseline=a.baseline))
