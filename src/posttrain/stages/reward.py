"""Reward-model stage: one Bradley-Terry reward model per aspect, with TRL's RewardTrainer.

    posttrain reward --aspect helpful --init results/sft --data results/data/preference \\
        --out results/reward/helpful [--params params.yaml ...]

The loss is pairwise (-log sigmoid(r_chosen - r_rejected)), not a classifier on chosen rows. The
model is the init model (SFT by default) with a scalar head, LoRA by default. Pairs longer than
`reward.max_length` are counted and left out (never truncated: a cut-off pair can flip its
label). Writes adapter/ (PEFT: LoRA + the score head) or model/ (full), metrics.json (held-out
pairwise accuracy, mean margin, the training-set reward mean/std RL normalises with), log.csv,
curves.png, README.md and manifest.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from posttrain.config import Params, section
from posttrain.core import checkpoints
from posttrain.core.commands import params_arg
from posttrain.core.manifest import require_manifest, write_manifest, write_metrics
from posttrain.models import reward_model
from posttrain.training import trainers as training

log = logging.getLogger(__name__)


def main(params: Params, aspect: str, init_dir: Path, data_dir: Path, out: Path) -> dict:
    from transformers import AutoModelForSequenceClassification, set_seed

    cfg = params.reward
    if aspect not in cfg.aspects:
        raise ValueError(f"reward.aspects has no aspect {aspect!r}; defined: {sorted(cfg.aspects) or 'none'}")
    weights, tokenizer = training.init_model(init_dir, f"{cfg.init} (the reward model's init)")
    require_manifest(data_dir, "prepare-data --kind preference")
    precision = training.resolve_precision(cfg.precision)
    if cfg.method == "qlora":
        raise ValueError("reward.method: qlora is not supported for reward models; use lora or full")

    # 1. Pairs of this aspect, tokenized once; over-length pairs counted and left out.
    subsets = cfg.aspects[aspect].subsets
    train, counts_train = _pairs(data_dir / "train.jsonl", subsets, tokenizer, cfg)
    val, counts_val = _pairs(data_dir / "val.jsonl", subsets, tokenizer, cfg)
    if len(train) < 2 or not val:
        raise ValueError(f"aspect {aspect!r}: {len(train)} training and {len(val)} held-out pairs with subset in "
                         f"{subsets} under {data_dir} ({counts_train['over_length']} + {counts_val['over_length']} "
                         f"more over reward.max_length {cfg.max_length} tokens); subsets present: {_subsets(data_dir)}")
    log.info("aspect %s: %d training / %d held-out pairs (%d / %d over %d tokens left out)", aspect, len(train),
             len(val), counts_train["over_length"], counts_val["over_length"], cfg.max_length)

    # 2. Checkpoints per (aspect, params, inputs, code), outside the declared outputs.
    run_dir = checkpoints.run_dir(cfg.checkpoint_dir, f"reward-{aspect}",
                                  {**section(params, "reward"), "aspect": aspect},
                                  {"init": init_dir, "data": data_dir,
                                   **checkpoints.code_inputs(__file__, training, reward_model)})
    resume = checkpoints.latest_complete(run_dir)
    log.info("checkpoints in %s%s", run_dir, f"; resuming from {resume.name}" if resume else "")

    # 3. Model (the head is random: seed first), trainer, training.
    set_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(weights, num_labels=1,
                                                               dtype=precision["dtype"])
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = _build_trainer(model, tokenizer, train, val, run_dir, cfg, precision)
    training.check_router_frozen(trainer.model, cfg.method, "reward")
    trainable, total = training.count_parameters(trainer.model)
    history, result, elapsed = training.train_resumably(trainer, run_dir, resume)

    # 4. Held-out accuracy and margin, and the training-set score statistics, with the final model.
    scored = trainer.model
    # In the training precision whether the model was trained here or restored from its last
    # checkpoint (a trainer that trained in mixed precision leaves its forward under autocast)
    with training.autocast(precision):
        val_scores = _score_pairs(scored, tokenizer, val, cfg.batch_size)
        stats_scores = _score_pairs(scored, tokenizer, train[: cfg.stats_pairs], cfg.batch_size)
    margins = [c - r for c, r in val_scores]
    flat = [s for pair in stats_scores for s in pair]
    metrics = {
        "aspect": aspect, "subsets": subsets, "method": cfg.method, "init": cfg.init,
        "context_turns": cfg.context_turns,
        "heldout_accuracy": sum(m > 0 for m in margins) / len(margins),
        "heldout_mean_margin": statistics.fmean(margins),
        "heldout_pairs": len(val), "train_pairs": len(train),
        "pairs_over_length": counts_train["over_length"] + counts_val["over_length"],
        "train_reward_mean": statistics.fmean(flat), "train_reward_std": statistics.pstdev(flat),
        "train_stats_pairs": len(stats_scores),
        "steps": trainer.state.global_step, "train_runtime_s": round(elapsed, 2),
        "peak_memory_gb": training.peak_memory_gb(), "trainable_params": trainable, "total_params": total,
        "resumed_from_step": int(resume.name.split("-")[1]) if resume else None,
    }

    # 5. Outputs, replaced whole, by the main process; manifest last.
    main = training.fresh_output_dir(out)
    folder = out / ("model" if cfg.method == "full" else "adapter")
    trainer.model.save_pretrained(folder, is_main_process=main)  # every process takes part; one writes
    if not main:
        return {}
    rows = training.write_log_csv(history, out / "log.csv",
                                  {"train_loss": "loss", "val_loss": "eval_loss", "train_accuracy": "accuracy",
                                   "val_accuracy": "eval_accuracy", "val_margin": "eval_margin",
                                   "learning_rate": "learning_rate"})
    metrics["val_accuracy_first"] = next((r["val_accuracy"] for r in rows if r.get("val_accuracy") != ""), None)
    training.plot_curves(rows, out / "curves.png", f"Reward model: {aspect}",
                         [["train_loss", "val_loss"], ["train_accuracy", "val_accuracy"], ["val_margin"]])
    tokenizer.save_pretrained(folder)
    if cfg.method != "full":
        training.sort_adapter_config(folder / "adapter_config.json")
    metrics = {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}
    metrics = write_metrics(out, metrics)
    _write_model_card(out, aspect, init_dir, cfg, metrics)
    return write_manifest(out, stage=f"reward:{aspect}", params={**section(params, "reward"), "aspect": aspect},
                          seed=cfg.seed, inputs={"init": init_dir, "data": data_dir},
                          chat_template=tokenizer.chat_template,
                          extra={"checkpoints": str(run_dir), "metrics": metrics})


# --- pieces ----------------------------------------------------------------------------------


def _pairs(path: Path, subsets: list[str], tokenizer, cfg) -> tuple[list[dict], dict]:
    pairs, over = [], 0
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("subset") not in subsets or "completion" in row:   # an unpaired rating: KTO's alone
                continue
            chosen = reward_model.encode(tokenizer, row["prompt"], row["chosen"], cfg.context_turns)
            rejected = reward_model.encode(tokenizer, row["prompt"], row["rejected"], cfg.context_turns)
            if max(len(chosen), len(rejected)) > cfg.max_length:
                over += 1
                continue
            pairs.append({"chosen_ids": chosen, "rejected_ids": rejected})
    return pairs, {"over_length": over}


def _subsets(data_dir: Path) -> list[str]:
    found = set()
    for name in ("train.jsonl", "val.jsonl"):
        with open(data_dir / name) as fh:
            found.update(json.loads(line).get("subset") for line in fh)
    return sorted(s for s in found if s)


def _score_pairs(model, tokenizer, pairs: list[dict], batch_size: int) -> list[tuple[float, float]]:
    seqs = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
    scores = reward_model.score_ids(model, tokenizer.pad_token_id, seqs, batch_size * 2)
    return list(zip(scores[: len(pairs)], scores[len(pairs):]))


def _build_trainer(model, tokenizer, train: list[dict], val: list[dict], run_dir: Path, cfg, precision: dict):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    class LengthKeepingRewardTrainer(RewardTrainer):
        """RewardTrainer that passes the pairs' `length` column on to the length-grouped sampler
        (it keeps only its own columns; the collator ignores the extra one)."""

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "length" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "length"]

    def dataset(pairs: list[dict]):
        return Dataset.from_list([{**p, "length": max(len(p["chosen_ids"]), len(p["rejected_ids"]))} for p in pairs])

    args = RewardConfig(
        **training.trainer_kwargs(cfg, precision, run_dir),
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        metric_for_best_model="eval_loss" if cfg.early_stopping_patience else None,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", length_column_name="length",
    )
    return LengthKeepingRewardTrainer(model=model, args=args, train_dataset=dataset(train), eval_dataset=dataset(val),
                                      processing_class=tokenizer, callbacks=training.callbacks(cfg),
                                      peft_config=training.lora_config(model, cfg.lora, "SEQ_CLS", "reward")
                                      if cfg.method != "full" else None)


def _write_model_card(out: Path, aspect: str, init_dir: Path, cfg, m: dict) -> None:
    training.write_model_card(
        out, library="peft" if cfg.method != "full" else "transformers", tags=["reward-model", "trl"],
        title=f"Reward model: {aspect}",
        intro=f"A Bradley-Terry reward model trained by `posttrain reward` with TRL's RewardTrainer on "
              f"preference pairs of subsets {m['subsets']}, starting from `{init_dir}`.",
        rows={"method": f"{cfg.method} (r={cfg.lora.r}, layers={cfg.lora.layers or 'all'})", "steps": m["steps"],
              "held-out pairwise accuracy": m["heldout_accuracy"], "held-out mean margin": m["heldout_mean_margin"],
              "pairs (train / held-out / over length)":
                  f"{m['train_pairs']} / {m['heldout_pairs']} / {m['pairs_over_length']}",
              "training reward mean ± std": f"{m['train_reward_mean']:.3f} ± {m['train_reward_std']:.3f}"},
        usage="`adapter/` loads with `AutoModelForSequenceClassification.from_pretrained(init, num_labels=1)` "
              "then `PeftModel.from_pretrained(model, 'adapter')`\n(`model/` directly for full fine-tuning); "
              "`posttrain.models.reward_model.RewardModel.load(folder)` does both and\nnormalises scores with the "
              "training mean/std above. Curves: `curves.png`, `log.csv`.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reward", help="train a Bradley-Terry reward model for one aspect with TRL")
    p.add_argument("--aspect", required=True, help="a name under reward.aspects (e.g. helpful, safety)")
    p.add_argument("--init", type=Path, required=True, help="the model it starts from (results/sft or results/base)")
    p.add_argument("--data", type=Path, required=True, help="prepared preference data (results/data/preference)")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: main(params, a.aspect, a.init, a.data, a.out))
