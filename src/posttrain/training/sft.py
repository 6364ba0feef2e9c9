"""Supervised fine-tuning with TRL's SFTTrainer and PEFT: what the SFT stage and the distillation
students (posttrain.stages.distill) both train with.

LoRA (default), QLoRA (4-bit base, CUDA only) or full fine-tuning; assistant-only loss with the
base stage's chat template; packing; MoE-aware adapters (attention + fused experts, router frozen,
router aux loss). Checkpoints live outside the declared outputs and a rerun resumes from the last
complete one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from posttrain.core import checkpoints
from posttrain.core.manifest import require_manifest, write_manifest, write_metrics
from posttrain.models import chat
from posttrain.training import trainers as training

if TYPE_CHECKING:
    from posttrain.config import SftParams

log = logging.getLogger(__name__)


def train(cfg: SftParams, stage: str, params_section: dict, base_dir: Path, data_dir: Path, out: Path, *,
          extra_train: list[Path] = (), use_data_rows: bool = True, teacher=None, card: dict | None = None,
          inputs: dict | None = None) -> dict:
    """Fine-tune the model in `base_dir` on `data_dir` (train.jsonl unless not `use_data_rows`,
    plus `extra_train` files; validation on its val.jsonl) and write the stage's outputs to `out`. The SFT stage and the
    distillation students share this; `teacher` (a `posttrain.training.distillation.Teacher`) adds a
    loss on its token distributions."""
    from transformers import AutoTokenizer, set_seed

    base_manifest = require_manifest(base_dir, "base-model")
    require_manifest(data_dir, "prepare-data --kind sft")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    _check_template(tokenizer, base_manifest, cfg)
    precision = training.resolve_precision(cfg.precision)
    if cfg.method == "qlora" and not torch.cuda.is_available():
        raise ValueError(f"{stage}: method qlora loads the base in 4 bits with bitsandbytes, which needs a CUDA GPU; "
                         "use method: lora on CPU")
    inputs = {"base": base_dir, "data": data_dir, **(inputs or {})}  # callers name what extra_train comes from

    # 1. Where checkpoints go: a folder per (params, inputs), outside the declared outputs.
    run_dir = checkpoints.run_dir(cfg.checkpoint_dir, stage, params_section,
                                  {**inputs, **checkpoints.code_inputs(__file__, training)})
    resume = checkpoints.latest_complete(run_dir)
    log.info("checkpoints in %s%s", run_dir, f"; resuming from {resume.name}" if resume else "")

    # 2. Model, adapters and trainer.
    set_seed(cfg.seed)
    model = _load_model(base_dir, cfg, precision)
    train_files = [*([data_dir / "train.jsonl"] if use_data_rows else []), *extra_train]
    trainer = _build_trainer(model, tokenizer, train_files, data_dir / "val.jsonl", run_dir, cfg, precision, teacher,
                             stage)
    training.check_router_frozen(trainer.model, cfg.method, stage)
    trainable, total = training.count_parameters(trainer.model)

    # 3. Train, with validation loss at step 0 and at the end.
    history, result, elapsed = training.train_resumably(trainer, run_dir, resume)

    # 4. Outputs: replaced whole, by the main process; manifest last.
    main = training.fresh_output_dir(out)
    _save_models(trainer, tokenizer, base_dir, out, cfg, main)
    if not main:
        return {}
    columns = {"train_loss": "loss", "val_loss": "eval_loss", "learning_rate": "learning_rate",
               "grad_norm": "grad_norm", "tokens_seen": "num_input_tokens_seen"}
    if teacher is not None:
        columns |= {"kd_loss": "kd_loss", "ce_loss": "ce_loss"}
    rows = training.write_log_csv(history, out / "log.csv", columns)
    card = card or {"title": "SFT model", "tags": ["sft", "trl"],
                    "intro": f"Fine-tuned by `posttrain sft` with TRL's SFTTrainer from "
                             f"`{base_manifest['params']['base']}`."}
    training.plot_curves(rows, out / "curves.png", f"{card['title']} ({cfg.method})",
                         [["train_loss", "val_loss"], *([["kd_loss", "ce_loss"]] if teacher is not None else []),
                          ["learning_rate"]])
    metrics = _metrics(rows, trainer, result, elapsed, trainable, total, cfg, precision["name"], resume)
    metrics = write_metrics(out, metrics)
    _write_model_card(out, card, cfg, metrics)
    return write_manifest(out, stage=stage, params=params_section, seed=cfg.seed, inputs=inputs,
                          chat_template=tokenizer.chat_template,
                          extra={"checkpoints": str(run_dir), "metrics": metrics})


# --- pieces ----------------------------------------------------------------------------------


def _check_template(tokenizer, base_manifest: dict, cfg: SftParams) -> None:
    template = tokenizer.chat_template
    if chat.template_hash(template) != base_manifest.get("chat_template_sha256"):
        raise ValueError("the tokenizer's chat template differs from the one the base manifest records; "
                         "rerun the base-model stage")
    if cfg.assistant_only_loss and not chat.has_generation_markers(template):
        raise ValueError("sft.assistant_only_loss needs a chat template with {% generation %} markers; set "
                         "model.chat_template to chatml or qwen3 (or a .jinja with markers), or turn it off")


def _load_model(base_dir: Path, cfg: SftParams, precision: dict):
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": precision["dtype"]}
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=training.torch_dtype(precision["name"]))
    return AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)


def _build_trainer(model, tokenizer, train_files: list[Path], val_file: Path, run_dir: Path, cfg: SftParams,
                   precision: dict, teacher, stage: str):
    from datasets import concatenate_datasets, load_dataset
    from trl import SFTConfig

    def rows(path: Path):  # files may carry different metadata columns: only messages are trained on
        return load_dataset("json", data_files=str(path), split="train").select_columns(["messages"])

    train_data = concatenate_datasets([rows(f) for f in train_files])
    val_data = rows(val_file)
    is_moe = hasattr(model.config, "output_router_logits")
    args = SFTConfig(
        **training.trainer_kwargs(cfg, precision, run_dir),
        include_num_input_tokens_seen="non_padding",
        assistant_only_loss=cfg.assistant_only_loss, packing=cfg.packing,
        router_aux_loss_coef=cfg.router_aux_loss_coef if is_moe else None,
        metric_for_best_model="eval_loss" if cfg.early_stopping_patience else None,
    )
    if is_moe and cfg.router_aux_loss_coef is not None:
        model.config.router_aux_loss_coef = cfg.router_aux_loss_coef
    extra = {"teacher": teacher} if teacher is not None else {}
    trainer_class = model_loss_trainer() if teacher is None else teacher.trainer_class(model_loss_trainer())
    return trainer_class(model=model, args=args, train_dataset=train_data, eval_dataset=val_data,
                         processing_class=tokenizer, callbacks=training.callbacks(cfg),
                         peft_config=training.lora_config(model, cfg.lora, "CAUSAL_LM", stage)
                         if cfg.method != "full" else None, **extra)


def model_loss_trainer():
    """The trainer class, built on first use because importing TRL takes seconds."""
    from transformers import Trainer
    from trl import SFTTrainer

    class ModelLossSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss is the model's own cross-entropy (plus the MoE aux loss, which
        transformers adds when router logits are requested). TRL's default computes the loss
        through a tiled LM head that also returns entropy and top-1 accuracy for every token;
        on CPU that costs a sizeable share of a step (measured by benchmarks/sft_throughput.py;
        figures in benchmarks/RESULTS.md, "Training throughput"). The labels are the
        same: TRL's collator masks non-assistant tokens and packed-sequence boundaries."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            if self.aux_loss_enabled:
                inputs["output_router_logits"] = True
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return ModelLossSFTTrainer


def _metrics(rows, trainer, result, elapsed, trainable, total, cfg, precision, resume) -> dict:
    train = [r["train_loss"] for r in rows if r.get("train_loss") not in (None, "")]
    val = [r["val_loss"] for r in rows if r.get("val_loss") not in (None, "")]
    tokens = trainer.state.num_input_tokens_seen
    return {
        "method": cfg.method, "precision": precision,
        "steps": trainer.state.global_step,
        "train_loss_first": train[0] if train else None, "train_loss_last": train[-1] if train else None,
        "val_loss_first": val[0] if val else None, "val_loss_last": val[-1] if val else None,
        "val_loss_best": min(val) if val else None,
        "val_loss_reduction": (val[0] - val[-1]) / val[0] if len(val) > 1 and val[0] else None,
        "tokens_seen": tokens,
        # throughput of this process's training time (a resumed run counts only its own part)
        "tokens_per_second": (result.metrics.get("train_tokens_per_second") if result else None)
        or (tokens / elapsed if elapsed else None),
        "train_runtime_s": round(elapsed, 2), "peak_memory_gb": training.peak_memory_gb(),
        "trainable_params": trainable, "total_params": total,
        "resumed_from_step": int(resume.name.split("-")[1]) if resume else None,
    }


def _save_models(trainer, tokenizer, base_dir: Path, out: Path, cfg: SftParams, main: bool) -> None:
    """The trained weights (every process takes part; `main` writes them), then in the main process
    the tokenizer and the merged model."""

    folder = out / ("merged" if cfg.method == "full" else "adapter")
    trainer.model.save_pretrained(folder, is_main_process=main)
    if not main:
        return
    tokenizer.save_pretrained(folder)
    if cfg.method == "full":
        return
    training.sort_adapter_config(out / "adapter" / "adapter_config.json")
    del trainer
    training.merge_adapter(base_dir, out / "adapter", tokenizer, out / "merged")


def _write_model_card(out: Path, card: dict, cfg: SftParams, m: dict) -> None:
    training.write_model_card(
        out, library="peft" if cfg.method != "full" else "transformers", tags=card["tags"], title=card["title"],
        intro=card["intro"],
        rows={"method": f"{cfg.method} (r={cfg.lora.r}, alpha={cfg.lora.alpha})" if cfg.method != "full" else "full",
              "steps": m["steps"],
              "validation loss": f"{training.fmt(m['val_loss_first'])} → {training.fmt(m['val_loss_last'])}",
              "trainable / total parameters": f"{m['trainable_params']:,} / {m['total_params']:,}",
              "assistant-only loss, packing": f"{cfg.assistant_only_loss}, {cfg.packing}",
              **card.get("rows", {})},
        usage=("`adapter/` loads with `PeftModel.from_pretrained`, `merged/` with "
               "`AutoModelForCausalLM.from_pretrained`;\nboth carry the tokenizer and chat template. "
               if cfg.method != "full" else
               "`merged/` loads with `AutoModelForCausalLM.from_pretrained` and carries the tokenizer and chat "
               "template. ") + "Curves: `curves.png`, `log.csv`.")
