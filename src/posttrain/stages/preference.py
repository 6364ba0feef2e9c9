"""Preference optimisation stage: one stage of `preference.stages`, trained straight on the
preference pairs with TRL's DPO, KTO, ORPO or SimPO (CPO) trainer.

    posttrain preference --stage dpo --init results/sft --data results/data/preference \\
        --out results/preference/dpo [--params ...]

The policy is a LoRA adapter on the init model; DPO's and KTO's reference is the same weights
with the adapter switched off (one copy in memory); ORPO and SimPO need none. Pairs longer than
`preference.max_length` are counted and left out, never truncated. A non-finite loss stops the
stage before anything is written; checkpoints live outside the outputs and a rerun resumes from
the last complete one. Every algorithm is judged by the same held-out measure, before and after
training (posttrain.training.preference): the policy's log-probability margin of chosen over
rejected.

Writes adapter/, merged/ (init + adapter: what the evaluation and a later stage load),
metrics.json, log.csv, curves.png, README.md and manifest.json.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from posttrain.config import Params, PreferenceStageParams
from posttrain.core import checkpoints
from posttrain.core.commands import params_arg
from posttrain.core.manifest import require_manifest, write_manifest, write_metrics
from posttrain.training import preference
from posttrain.training import trainers as training

log = logging.getLogger(__name__)
TRAINERS = {"dpo": "TRL's DPOTrainer", "kto": "TRL's KTOTrainer (the pairs unpaired)",
            "orpo": "TRL's ORPOTrainer", "simpo": "TRL's CPOTrainer with the SimPO loss"}


def stage_params(params: Params, name: str) -> PreferenceStageParams:
    for st in params.preference.stages:
        if st.name == name:
            return st
    raise ValueError(f"preference.stages has no stage {name!r}; defined: "
                     f"{[s.name for s in params.preference.stages] or 'none'}")


def stage_section(params: Params, st: PreferenceStageParams) -> dict:
    """What the stage's result depends on: the shared settings and its own entry."""
    return {**params.preference.model_dump(mode="json", exclude={"stages"}), "stage": st.model_dump(mode="json")}


def main(params: Params, stage: str, init_dir: Path, data_dir: Path, out: Path) -> dict:
    from transformers import AutoModelForCausalLM, set_seed

    cfg, st = params.preference, stage_params(params, stage)
    weights, tokenizer = training.init_model(init_dir, f"the init model of preference stage {stage!r}")
    require_manifest(data_dir, "prepare-data --kind preference")
    precision = training.resolve_precision(cfg.precision)

    # 1. The stage's pairs, and for KTO the unpaired ratings too; over-length ones counted and left out.
    train, train_rated, over_train = preference.read_pairs(data_dir / "train.jsonl", st.subsets, tokenizer,
                                                           cfg.max_length)
    val, val_rated, over_val = preference.read_pairs(data_dir / "val.jsonl", st.subsets, tokenizer, cfg.max_length)
    rated = st.algorithm == "kto"
    if len(train) + (len(train_rated) if rated else 0) < 2 or not val:
        raise ValueError(f"preference stage {stage!r}: {len(train)} training and {len(val)} held-out pairs "
                         f"({len(train_rated) + len(val_rated)} unpaired ratings) with subset in {st.subsets} under "
                         f"{data_dir} ({over_train + over_val} more over preference.max_length {cfg.max_length} "
                         f"tokens); every stage needs held-out pairs, the measure all four algorithms share")
    log.info("preference stage %s (%s) from %s: %d training / %d held-out pairs, %d unpaired ratings %s (%d over %d "
             "tokens left out)", stage, st.algorithm, init_dir, len(train), len(val), len(train_rated) + len(val_rated),
             "used" if rated else "left out (KTO's alone)", over_train + over_val, cfg.max_length)

    # 2. Checkpoints per (stage, params, inputs, code).
    inputs = {"init": init_dir, "data": data_dir}
    run_dir = checkpoints.run_dir(cfg.checkpoint_dir, f"preference-{stage}", stage_section(params, st),
                                  {**inputs, **checkpoints.code_inputs(__file__, training, preference)})
    resume = checkpoints.latest_complete(run_dir)
    log.info("checkpoints in %s%s", run_dir, f"; resuming from {resume.name}" if resume else "")

    # 3. Policy (adapter seeded), trainer, the held-out margin before and after training.
    set_seed(st.seed)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=precision["dtype"])
    trainer = preference.build_trainer(model, tokenizer, train + (train_rated if rated else []),
                                       val + (val_rated if rated else []), run_dir, cfg, st, precision)
    training.check_router_frozen(trainer.model, cfg.method, "preference")
    trainable, total = training.count_parameters(trainer.model)
    with training.autocast(precision):
        before = preference.logp_margins(trainer.model, tokenizer, val, cfg.batch_size)
    history, _, elapsed = training.train_resumably(trainer, run_dir, resume)
    with training.autocast(precision):
        after = preference.logp_margins(trainer.model, tokenizer, val, cfg.batch_size)

    # 4. Outputs, replaced whole, by the main process; manifest last.
    main_process = training.fresh_output_dir(out)
    folder = out / ("merged" if cfg.method == "full" else "adapter")
    trainer.model.save_pretrained(folder, is_main_process=main_process)
    if not main_process:
        return {}
    tokenizer.save_pretrained(folder)
    if cfg.method != "full":
        training.sort_adapter_config(folder / "adapter_config.json")
        training.merge_adapter(weights, folder, tokenizer, out / "merged")
    rows = training.write_log_csv(history, out / "log.csv", preference.LOG_COLUMNS)
    training.plot_curves(rows, out / "curves.png", f"Preference stage {stage} ({st.algorithm})",
                         [["train_loss", "val_loss"], ["train_margin", "val_margin"],
                          ["train_accuracy", "val_accuracy"], ["learning_rate"]])
    metrics = write_metrics(out, {
        "stage": st.name, "algorithm": st.algorithm, "init": st.init, "subsets": st.subsets, "beta": st.beta,
        **preference.margin_summary(before, after),
        "train_pairs": len(train), "heldout_pairs": len(val), "pairs_over_length": over_train + over_val,
        "unpaired_ratings": len(train_rated) + len(val_rated), "unpaired_ratings_used": rated,
        # wall-clock facts (the run record, run.json): the report's training time and peak memory
        "steps": trainer.state.global_step, "train_runtime_s": round(elapsed, 2),
        "peak_memory_gb": training.peak_memory_gb(),
        "trainable_params": trainable, "total_params": total,
        "resumed_from_step": int(resume.name.split("-")[1]) if resume else None,
    })
    _write_model_card(out, stage, init_dir, st, metrics)
    return write_manifest(out, stage=f"preference:{stage}", params=stage_section(params, st), seed=st.seed,
                          inputs=inputs, chat_template=tokenizer.chat_template,
                          extra={"checkpoints": str(run_dir), "metrics": metrics})


def _write_model_card(out: Path, stage: str, init_dir: Path, st: PreferenceStageParams, m: dict) -> None:
    training.write_model_card(
        out, library="peft", tags=["preference", st.algorithm, "trl"], title=f"Preference stage: {stage}",
        intro=f"Trained by `posttrain preference --stage {stage}` with {TRAINERS[st.algorithm]} from `{init_dir}` on "
              f"preference pairs of subsets {st.subsets}.",
        rows={"steps": m["steps"], "beta": st.beta,
              "pairs (train / held-out / over length)":
                  f"{m['train_pairs']} / {m['heldout_pairs']} / {m['pairs_over_length']}",
              "held-out log-prob margin: init → trained":
                  f"{training.fmt(m['heldout_logp_margin_start'])} → {training.fmt(m['heldout_logp_margin'])}",
              "held-out pairs preferred: init → trained":
                  f"{training.fmt(m['heldout_pair_accuracy_start'])} → {training.fmt(m['heldout_pair_accuracy'])}",
              "held-out margin gain (log-ratio to the init), pairs moved to the chosen side":
                  f"{training.fmt(m['heldout_margin_gain'])}, {training.fmt(m['heldout_pairs_moved_to_chosen'])}"},
        usage="`merged/` loads with `AutoModelForCausalLM.from_pretrained`; `adapter/` with `PeftModel` on the init "
              "model. Curves: `curves.png`, `log.csv`.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preference", help="one preference optimisation stage (DPO, KTO, ORPO, SimPO) of "
                                          "preference.stages")
    p.add_argument("--stage", required=True, help="a name in preference.stages")
    p.add_argument("--init", type=Path, required=True, help="the model it starts from (results/sft, results/base)")
    p.add_argument("--data", type=Path, required=True, help="prepared preference data (results/data/preference)")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: main(params, a.stage, a.init, a.data, a.out))
