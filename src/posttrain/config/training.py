"""How the training stages (sft, reward, rl, distill) train: adapters, optimiser, precision, devices,
checkpoints. Shared by their sections; not a section of its own."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, model_validator

from posttrain.config.base import Section


class LoraParams(Section):
    """LoRA adapters on a frozen base (method lora or qlora)."""
    r: int = Field(16, ge=1, description=(
        "Rank: r=16, alpha=32 is the common starting point; higher r learns more and costs memory linearly."))
    alpha: int = Field(32, ge=1, description=(
        "Scale: the update is multiplied by alpha / r (r=16, alpha=32 is the common starting point)."))
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description=(
        "Dropout on the adapter's input; must be 0 with `target_parameters`."))
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"], description=(
        "Linear modules to adapt, by name suffix (\"all-linear\" also hits an MoE router: avoid it)."))
    target_parameters: list[str] = Field(default_factory=list, description=(
        "Fused 3-D parameters to adapt (MoE experts in transformers 5: mlp.experts.gate_up_proj, "
        "mlp.experts.down_proj). A missing name fails the stage instead of silently training less."))
    layers: int | None = Field(None, ge=1, description=(
        "Adapt only the last N transformer layers (null: all). The backward pass then stops at the lowest adapted "
        "layer: a reward head on top layers trains several times faster."))

    @model_validator(mode="after")
    def _no_dropout_on_parameters(self) -> LoraParams:
        if self.target_parameters and self.dropout:
            # PEFT's ParamWrapper (LoRA on fused parameters) has no dropout path.
            raise ValueError("dropout must be 0 when target_parameters is set "
                             "(LoRA on fused parameters has no dropout)")
        return self


class TrainingParams(Section):
    """How every training stage (SFT, reward models, RL) trains: adapters, precision, devices,
    checkpoints."""
    method: Literal["lora", "qlora", "full"] = Field("lora", description=(
        "lora: adapters on a frozen base (default); qlora: the same on a 4-bit base (CUDA only); full: every weight "
        "(memory: ~16 bytes per parameter with AdamW in mixed precision)."))
    lora: LoraParams = Field(default_factory=LoraParams, description=(
        "The adapters of method lora and qlora."))
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description=(
        "Share of the training steps over which the learning rate warms up from 0."))
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup", "constant"] = Field("cosine", description=(
        "How the learning rate decays after warm-up (transformers' scheduler types)."))
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradients are clipped to this global norm.")
    gradient_checkpointing: bool = Field(False, description=(
        "Recompute activations in the backward pass: ~30 % slower, far less activation memory."))
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description=(
        "auto: bf16 on a GPU that supports it and on a CPU with bfloat16 instructions (AVX512-BF16, AMX), fp32 "
        "elsewhere. On a CPU bf16 is mixed precision: float32 weights, passes under autocast, RL rollouts sampled "
        "from a bfloat16 copy."))
    save_total_limit: int = Field(2, ge=1, description=(
        "Checkpoints kept on disk (older ones are deleted)."))
    logging_steps: int = Field(1, ge=1, description="Training metrics are logged every N steps.")
    checkpoint_dir: str = Field(".posttrain/checkpoints", description=(
        "Checkpoints live here, outside the declared outputs that Snakemake and DVC delete before a rerun; one "
        "subfolder per (params, inputs) fingerprint, so a changed run starts fresh."))
    gpus: int = Field(0, ge=0, description=(
        "GPUs per run (0: CPU or a single device). With gpus > 1 the stage runs under `accelerate launch "
        "--config_file configs/accelerate/<strategy>.yaml`."))
    strategy: Literal["none", "ddp", "fsdp", "zero3"] = Field("none", description=(
        "How the GPUs share the model: fsdp or zero3 shard weights, gradients and optimizer state (needed for 30B; "
        "they need gpus >= 2); ddp replicates (fine below ~7B)."))
    seed: int = Field(0, description="The trainer's seed: initialisation, data order, dropout.")

    def lora_with(self, overrides: dict | None, where: str) -> LoraParams:
        """This section's adapter with a stage's own `lora` keys over it, key by key; a bad key is
        an error naming the stage (`where`)."""
        try:
            return LoraParams(**{**self.lora.model_dump(), **(overrides or {})})
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError(f"{where}: lora: {problems}") from None

    @model_validator(mode="after")
    def _strategy_needs_gpus(self) -> TrainingParams:
        if self.strategy in ("fsdp", "zero3") and self.gpus < 2:
            raise ValueError(f"strategy {self.strategy} shards across GPUs: set gpus >= 2 (or strategy: none)")
        return self


class TrainerParams(TrainingParams):
    """A supervised trainer stage (SFT, reward models): batches of rows from a dataset."""
    max_length: int = Field(1024, ge=16, description="The most tokens in one training sequence.")
    max_steps: int = Field(-1, ge=-1, description="Optimisation steps; -1: train for `epochs`.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (when max_steps is -1).")
    batch_size: int = Field(8, ge=1, description="Rows per device per step.")
    grad_accum: int = Field(1, ge=1, description=(
        "Gradient accumulation: batches per optimiser step (the effective batch is batch_size x grad_accum x "
        "devices)."))
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate: 2e-4 suits LoRA; full fine-tuning "
                                                         "wants ~1e-5.")
    eval_steps: int = Field(20, ge=1, description="Validation every N steps (and at step 0).")
    save_steps: int = Field(20, ge=1, description="A checkpoint every N steps (the resume point).")
    early_stopping_patience: int | None = Field(None, ge=1, description=(
        "Stop after this many evaluations without improvement, keeping the best checkpoint; null: train to the end."))
