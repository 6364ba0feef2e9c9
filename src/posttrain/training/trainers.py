"""What the training stages share: precision by device, trainer arguments, LoRA configs,
resumable training with a step-0 evaluation, per-step logs as DVC plots, curves, model cards."""

from __future__ import annotations

import csv
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from posttrain.core import tracking
from posttrain.core.manifest import write_json

log = logging.getLogger(__name__)
# Router weights in the MoE architectures we support; they must never carry adapters.
ROUTER_MARKERS = (".mlp.gate.", ".router.", ".block_sparse_moe.gate.")


def processes() -> int:
    """How many processes train together (accelerate launch / torchrun set WORLD_SIZE; 1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Every process of a multi-GPU run trains; only the main one (rank 0) writes the stage's
    outputs: two processes replacing the same folder would collide."""
    return int(os.environ.get("RANK", "0")) == 0


def fresh_output_dir(out: Path) -> bool:
    """Once every process has finished training, the main one replaces `out` with an empty folder
    (a stage's outputs are replaced whole). True in the process that writes the outputs; weights
    are saved by all of them (`save_pretrained(..., is_main_process=...)`: sharded weights are
    gathered by all processes, written by one)."""
    main = is_main_process()
    if main:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return main


def resolve_precision(precision: str, cuda: bool | None = None) -> dict:
    """TrainingArguments flags for `precision`, and the dtypes that follow from it.

    auto: bf16 on a capable GPU; on a CPU, bf16 where it multiplies bfloat16 natively
    (posttrain.inference.dtype.cpu_has_bf16), fp32 elsewhere (emulated bfloat16 is slower than
    float32). On a GPU, bf16 loads the weights in bfloat16; on a CPU it is mixed precision: float32
    weights and optimiser, the forward and backward passes under autocast (LoRA steps of the demo
    model 1.8x faster), and a model that samples (RL rollouts) does so from a bfloat16 copy of its
    weights (`sampling_dtype`). `cuda`: whether the stage trains on a GPU (unset: whether one is
    visible)."""
    from posttrain.inference.dtype import cpu_has_bf16

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if precision == "auto":
        precision = "bf16" if (torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()) else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("precision: fp16 needs a CUDA GPU; use auto, bf16 or fp32 on a CPU")
    mixed_on_cpu = precision == "bf16" and not cuda
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "name": precision,
            "dtype": torch.float32 if mixed_on_cpu else torch_dtype(precision), "autocast": mixed_on_cpu,
            "sampling_dtype": torch.bfloat16 if mixed_on_cpu else None}


def autocast(precision: dict):
    """The forward and backward passes' autocast for a loop of our own (PPO): on for bf16 on a
    CPU (the weights stay float32), off elsewhere (a GPU's bf16 weights need none)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision["autocast"])


def torch_dtype(precision_name: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision_name, torch.float32)


def write_log_csv(log_history: list[dict], path: Path, columns: dict[str, str]) -> list[dict]:
    """One row per logged step with the given {csv column: trainer log key}; a DVC plot."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        row = rows.setdefault(step, {"step": step})
        for col, key in columns.items():
            if key in entry:
                row[col] = entry[key]
    ordered = [rows[s] for s in sorted(rows)]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", *columns])
        w.writeheader()
        for r in ordered:
            w.writerow({k: r.get(k, "") for k in ["step", *columns]})
    return ordered


def plot_curves(rows: list[dict], path: Path, title: str, panels: list[list[str]]) -> None:
    """A PNG with one panel per group of columns (e.g. [[train_loss, val_loss], [learning_rate]])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, cols in zip(axes[0], panels):
        for col in cols:
            pts = [(r["step"], r[col]) for r in rows if r.get(col) not in (None, "")]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, label=col)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class StopOnNonFinite(TrainerCallback):
    """A NaN or infinite loss stops training before it is checkpointed or promoted."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss", "reward"):
            value = (logs or {}).get(key)
            if value is not None and not torch.isfinite(torch.tensor(float(value))):
                raise FloatingPointError(f"{key} is {value} at step {state.global_step}; stopping without saving. "
                                         f"Lower the learning rate or check the data.")
        return control


class ProgressLines(TrainerCallback):
    """A line per step at most every few seconds (posttrain.core.progress) in place of the
    Trainer's progress bar, labelled with the run's name (`sft`, `reward-helpful`)."""

    def on_train_begin(self, args, state, control, **kwargs):
        from posttrain.core.progress import Progress

        label = Path(args.output_dir).name.rsplit("-", 1)[0]
        self.progress = Progress(label, state.max_steps, start=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.set(state.global_step)


# --- trainer set-up shared by every trainer stage ----------------------------------------------


def fsdp_checkpoints_activations() -> bool:
    """Whether this process runs under an FSDP launcher whose config checkpoints activations itself
    (`fsdp_activation_checkpointing` in configs/accelerate/fsdp.yaml; `accelerate launch` passes it on
    in the environment)."""
    return (os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
            and os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() == "true")


def activation_checkpointing(cfg) -> bool:
    """The training argument for a section's `gradient_checkpointing`: off when FSDP checkpoints the
    activations (transformers refuses both at once, and FSDP's own wraps the sharded layers), which
    gives the same memory saving."""
    return bool(cfg.gradient_checkpointing) and not fsdp_checkpoints_activations()


def training_kwargs(cfg, precision: dict, run_dir: Path) -> dict:
    """TrainingArguments fields every training stage sets from its TrainingParams section."""
    checkpointing = activation_checkpointing(cfg)
    return dict(
        output_dir=str(run_dir), lr_scheduler_type=cfg.lr_scheduler, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm, optim="adamw_torch", seed=cfg.seed,
        data_seed=cfg.seed, bf16=precision["bf16"], fp16=precision["fp16"], use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        save_strategy="steps", save_total_limit=cfg.save_total_limit, logging_steps=cfg.logging_steps,
        logging_first_step=True, **tracking.trainer_arguments(),
        dataloader_num_workers=0,
        disable_tqdm=True,   # ProgressLines writes lines a log keeps
    )


def trainer_kwargs(cfg, precision: dict, run_dir: Path) -> dict:
    """`training_kwargs` plus the batch, schedule and evaluation fields of a TrainerParams section."""
    return dict(
        **training_kwargs(cfg, precision, run_dir),
        max_steps=cfg.max_steps, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        eval_strategy="steps", eval_steps=cfg.eval_steps, save_steps=cfg.save_steps, max_length=cfg.max_length,
        load_best_model_at_end=cfg.early_stopping_patience is not None,
    )


def callbacks(cfg) -> list:
    from transformers import EarlyStoppingCallback

    from posttrain.core import preemption
    from posttrain.core.checkpoints import MarkComplete

    preemption.install()
    out = [MarkComplete(), StopOnNonFinite(), preemption.SaveAndStopOnSignal(), ProgressLines()]
    if getattr(cfg, "early_stopping_patience", None):
        out.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    return out


def lora_config(model, lora, task_type: str, section: str):
    """The PEFT config for `model`: the target modules that exist in it, fused parameters, and
    optionally only the last `lora.layers` layers. `section` names the params section in errors."""
    from peft import LoraConfig

    names = [n for n, _ in model.named_modules()]
    modules = [t for t in lora.target_modules if any(n.endswith("." + t) for n in names)]
    unused = sorted(set(lora.target_modules) - set(modules))
    if unused:
        log.info("%s.lora.target_modules not in this architecture (skipped): %s", section, ", ".join(unused))
    params = [n for n, _ in model.named_parameters()]
    missing = [t for t in lora.target_parameters if not any(p.endswith("." + t) for p in params)]
    if missing:
        raise ValueError(f"{section}.lora.target_parameters {missing} match no parameter of {model.config.model_type}")
    if not modules and not lora.target_parameters:
        raise ValueError(f"{section}.lora targets nothing in {model.config.model_type}: "
                         f"target_modules {lora.target_modules} match no module")
    layers = None
    if lora.layers is not None:
        n = model.config.get_text_config().num_hidden_layers
        if lora.layers > n:
            raise ValueError(f"{section}.lora.layers is {lora.layers} but {model.config.model_type} has {n} layers")
        layers = list(range(n - lora.layers, n))
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=modules or None, target_parameters=lora.target_parameters or None,
                      layers_to_transform=layers, task_type=task_type)


def check_router_frozen(model, method: str, section: str) -> None:
    """The router decides which experts run; training it with the adapters destabilises MoE
    fine-tuning, so it must stay frozen."""
    bad = [n for n, p in model.named_parameters() if p.requires_grad and any(m in n for m in ROUTER_MARKERS)]
    if bad and method != "full":
        raise ValueError(f"router parameters would be trained: {bad[:3]}; remove 'gate' from "
                         f"{section}.lora.target_modules")


def init_model(init_dir: Path, what: str) -> tuple[Path, object]:
    """(full-weight folder, tokenizer) of the artifact a stage starts from, after checking its
    manifest and that its tokenizer carries the chat template the manifest records."""
    from transformers import AutoTokenizer

    from posttrain.core.manifest import require_manifest
    from posttrain.models import chat
    from posttrain.models.sources import weights_dir

    manifest = require_manifest(init_dir, what)
    weights = weights_dir(init_dir)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    if chat.template_hash(tokenizer.chat_template) != manifest.get("chat_template_sha256"):
        raise ValueError(f"{init_dir}: the tokenizer's chat template differs from the one its manifest records")
    return weights, tokenizer


def merge_adapter(init_dir: Path, adapter: Path, tokenizer, out: Path) -> None:
    """merged/: a fresh copy of the init model in its own dtype with the adapter merged, a plain
    model any server loads. Not in the training precision: a bf16 GPU run must not round an fp32
    init's untrained weights (the MoE router's); and a QLoRA init is 4-bit, which cannot be merged
    into directly."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(init_dir, dtype="auto")
    PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(out)
    tokenizer.save_pretrained(out)


def peak_memory_gb() -> float:
    """This process's peak memory for the run record: the GPU's allocations on CUDA, else the
    resident set (Linux reports KiB)."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return trainable, total


def train_resumably(trainer, run_dir: Path, resume: Path | None) -> tuple[list[dict], object, float]:
    """Evaluate at step 0, train (from `resume` when given), evaluate at the end.

    Returns the log history with the step-0 evaluation first, the train() result and this
    process's training seconds. The trainer starts a fresh log when training begins, so the
    step-0 result is kept beside the checkpoints, where a resumed run finds it; the gain is then
    measured, not assumed.
    """
    initial = run_dir / "initial_eval.json"
    if resume is not None and initial.is_file():
        step0 = json.loads(initial.read_text())
    else:
        step0 = {**trainer.evaluate(), "step": 0}   # every process evaluates; one writes
        if is_main_process():
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(initial, step0)
    result, elapsed = train_or_restore(trainer, resume)
    # The final weights' evaluation, unless training ended on an eval step (the train summary comes
    # after it in the log) with those weights kept: evaluating them again costs a validation pass.
    step = trainer.state.global_step
    evaluated = any(e.get("step") == step and any(k.startswith("eval_") for k in e) for e in trainer.state.log_history)
    if not evaluated or trainer.args.load_best_model_at_end:
        trainer.evaluate()
    return [step0, *trainer.state.log_history], result, elapsed


def train_or_restore(trainer, resume: Path | None) -> tuple[object | None, float]:
    """trainer.train(), resuming from `resume`; when `resume` is the run's final checkpoint (a
    finished run whose outputs were deleted), restore it instead: resumed there, the HF trainer
    would train one step past max_steps and the rerun would differ from the run it repeats.
    Returns the train() result (None when restored) and this process's training seconds."""
    from transformers import TrainerState

    from posttrain.core import preemption

    try:
        if resume is not None:
            state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
            if state.max_steps and state.global_step >= state.max_steps:
                log.info("%s is the run's final checkpoint (step %d): restoring it, nothing to train", resume.name,
                         state.global_step)
                trainer._load_from_checkpoint(str(resume))
                trainer.state = state
                return None, 0.0
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        preemption.finished()
    preemption.exit_if_requested(trainer.state.global_step)
    return result, time.perf_counter() - started


def sort_adapter_config(path: Path) -> None:
    """PEFT keeps target_modules as a set, so its JSON order changes between processes; sorted,
    identical runs write identical bytes (DVC and Snakemake runs can be compared)."""
    config = json.loads(path.read_text())
    for key in ("target_modules", "target_parameters", "modules_to_save"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_model_card(out: Path, *, library: str, tags: list[str], title: str, intro: str,
                     rows: dict[str, object], usage: str) -> None:
    """README.md with Hugging Face model-card metadata, a summary table and how to load it."""
    table = "\n".join(f"| {k} | {fmt(v)} |" for k, v in rows.items())
    card = (f"---\nlibrary_name: {library}\ntags: [{', '.join(['posttrain', *tags])}]\n---\n# {title}\n\n"
            f"{intro}\n\n| | |\n|---|---|\n{table}\n\n{usage}\nExact parameters, inputs and library versions: "
            f"`manifest.json`.\n")
    (out / "README.md").write_text(card)
