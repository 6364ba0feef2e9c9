"""params.yaml: one section per stage, validated at load.

A parameter file is the default `params.yaml` (the embedded CPU demo) plus zero or more overlays
(recipes such as `recipes/qwen3-30b-a3b.yaml`) deep-merged on top, the same way Snakemake merges
`--configfile` files. Validation is strict: an unknown key or a wrong type fails at load with the
key's dotted path, the file that set it and what is allowed, before any job starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS = Path("params.yaml")
DATA_KINDS = ("sft", "preference", "prompts", "eval")


class ConfigError(ValueError):
    """A parameter file that does not match the schema; the message says what and where."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --- model -----------------------------------------------------------------------------------


class ModelParams(Section):
    # What to post-train. One of: `embedded:smollm2-135m-instruct` (the packaged demo model),
    # a hub id (`Qwen/Qwen3-30B-A3B-Base`, pinned by `revision`), a local HF folder, a `.gguf`
    # file, or `tiny:llama` / `tiny:qwen3_moe` (random test models built from a config).
    base: str = "embedded:smollm2-135m-instruct"
    # A hub commit sha or tag; recorded in the manifest. Ignored for local sources.
    revision: str | None = None
    # `keep` keeps the model's own template (a model without one gets ChatML). `chatml` and
    # `qwen3` are packaged templates that mark assistant spans with {% generation %}, which
    # assistant-only loss needs; a path to a .jinja file is used verbatim.
    chat_template: str = "keep"
    # Weights are saved in this dtype. `auto` keeps the source dtype, except that GGUF weights
    # (dequantized on load) are saved in float32.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Only for hub models that ship their own modelling code; off by default because it
    # executes code from the model repository.
    trust_remote_code: bool = False
    seed: int = 0


# --- demo corpus -----------------------------------------------------------------------------


class DemoDataParams(Section):
    # The demo corpus is generated, not downloaded; the same seed gives the same bytes.
    seed: int = 0
    # Row counts per generated file (see posttrain.demo.corpus.DEFAULT_SIZES); unset = default.
    sizes: dict[str, int] = Field(default_factory=dict)

    @field_validator("sizes")
    @classmethod
    def _known_files(cls, sizes: dict[str, int]) -> dict[str, int]:
        if not sizes:
            return sizes
        from posttrain.demo.corpus import DEFAULT_SIZES

        unknown = sorted(set(sizes) - set(DEFAULT_SIZES))
        if unknown:
            raise ValueError(f"unknown demo file(s) {unknown}; allowed: {sorted(DEFAULT_SIZES)}")
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ValueError(f"sizes must be >= 1, got {bad}")
        return sizes


# --- data ------------------------------------------------------------------------------------


class SourceParams(Section):
    # A local .json/.jsonl/.jsonl.gz/.parquet file, or `hf:NAME[?name=CONFIG&split=SPLIT]`
    # for a hub dataset (a local dataset folder works in place of NAME).
    path: str
    # `auto` detects the format from the first valid row; or name one of posttrain.data.formats.FORMATS.
    format: str = "auto"
    # A tag carried on every row (e.g. `arithmetic`, `safety`); eval tasks and RL prompt sets
    # select rows by it. Defaults to the file name without extensions.
    subset: str | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, name: str) -> str:
        from posttrain.data.formats import FORMATS

        if name != "auto" and name not in FORMATS:
            raise ValueError(f"unknown format {name!r}; allowed: auto, {', '.join(sorted(FORMATS))}")
        return name


class CleaningParams(Section):
    # NFKC + whitespace normalisation; harmless for chat data and makes dedup effective.
    normalize: bool = True
    # Rows longer than this many tokens (base tokenizer, chat template applied) are dropped:
    # they would be truncated in training, which silently teaches cut-off answers.
    max_tokens: int = Field(2048, ge=8)
    # Exact duplicates (after normalisation) are always worth dropping; near duplicates use
    # MinHash LSH over word shingles. A lower threshold drops more (and more false positives).
    dedup_exact: bool = True
    near_dup: bool = True
    near_dup_threshold: float = Field(0.85, gt=0.0, le=1.0)
    near_dup_num_perm: int = Field(128, ge=16)
    near_dup_shingle_words: int = Field(3, ge=1)
    # `scrub` replaces e-mails, phone numbers and secrets with placeholders; `drop` removes the
    # row; `off` keeps them (only for data already vetted).
    pii: Literal["scrub", "drop", "off"] = "scrub"
    # Case-insensitive substrings; a row containing any is dropped.
    blocklist: list[str] = Field(default_factory=list)
    # Drop training rows that share an n-gram of this many words with any eval prompt.
    # 13 words follows the GPT-3 contamination analysis; lower is stricter.
    decontaminate: bool = True
    decontamination_ngram: int = Field(13, ge=3)


class SourcesParams(Section):
    # One list per data kind; a kind with no sources is not prepared.
    eval: list[SourceParams] = Field(default_factory=list)
    sft: list[SourceParams] = Field(default_factory=list)
    preference: list[SourceParams] = Field(default_factory=list)
    prompts: list[SourceParams] = Field(default_factory=list)

    def of(self, kind: str) -> list[SourceParams]:
        return getattr(self, kind)


class DataParams(Section):
    sources: SourcesParams = Field(default_factory=SourcesParams)
    cleaning: CleaningParams = Field(default_factory=CleaningParams)
    # Share of rows routed to val.jsonl, by content hash (stable under reordering and reruns).
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Fail the stage when more than this share of a source's rows is malformed: a wrong format
    # or a broken file should stop the run, not quietly shrink the dataset.
    max_reject_ratio: float = Field(0.05, ge=0.0, le=1.0)
    # Fail when more than this share of a source's rows is over cleaning.max_tokens: the limit
    # (or the source) is wrong, and training on the short remainder would skew the data.
    max_too_long_ratio: float = Field(0.2, ge=0.0, le=1.0)
    seed: int = 0


# --- sft -------------------------------------------------------------------------------------


class LoraParams(Section):
    # Rank and scale: r=16, alpha=32 is the common starting point; higher r learns more and
    # costs memory linearly.
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # Linear modules to adapt, by name suffix ("all-linear" also hits an MoE router: avoid it).
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    # Fused 3-D parameters to adapt (MoE experts in transformers 5: mlp.experts.gate_up_proj,
    # mlp.experts.down_proj). A missing name fails the stage instead of silently training less.
    target_parameters: list[str] = Field(default_factory=list)
    # Adapt only the last N transformer layers (null: all). The backward pass then stops at
    # the lowest adapted layer: a reward head on top layers trains several times faster.
    layers: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _no_dropout_on_parameters(self) -> "LoraParams":
        if self.target_parameters and self.dropout:
            # PEFT's ParamWrapper (LoRA on fused parameters) has no dropout path.
            raise ValueError("dropout must be 0 when target_parameters is set (LoRA on fused parameters has no dropout)")
        return self


class TrainingParams(Section):
    """How every training stage (SFT, reward models, RL) trains: adapters, precision, devices,
    checkpoints."""
    # lora: adapters on a frozen base (default); qlora: the same on a 4-bit base (CUDA only);
    # full: every weight (memory: ~16 bytes per parameter with AdamW in mixed precision).
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraParams = Field(default_factory=LoraParams)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    # Recompute activations in the backward pass: ~30 % slower, far less activation memory.
    gradient_checkpointing: bool = False
    # auto: bf16 on a GPU that supports it, fp32 on CPU (CPU bf16 matmuls are slow and lossy).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(1, ge=1)
    # Checkpoints live here, outside the declared outputs that Snakemake and DVC delete before
    # a rerun; one subfolder per (params, inputs) fingerprint, so a changed run starts fresh.
    checkpoint_dir: str = ".posttrain/checkpoints"
    # GPUs per run and how they share the model: fsdp or zero3 shard weights, gradients and
    # optimizer state (needed for 30B); ddp replicates (fine below ~7B). With gpus > 1 the stage
    # runs under `accelerate launch --config_file configs/accelerate/<strategy>.yaml`.
    gpus: int = Field(0, ge=0)
    strategy: Literal["none", "ddp", "fsdp", "zero3"] = "none"
    seed: int = 0

    @model_validator(mode="after")
    def _strategy_needs_gpus(self) -> "TrainingParams":
        if self.strategy in ("fsdp", "zero3") and self.gpus < 2:
            raise ValueError(f"strategy {self.strategy} shards across GPUs: set gpus >= 2 (or strategy: none)")
        return self


class TrainerParams(TrainingParams):
    """A supervised trainer stage (SFT, reward models): batches of rows from a dataset."""
    max_length: int = Field(1024, ge=16)
    max_steps: int = Field(-1, ge=-1)       # -1: train for `epochs`
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)        # per device
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)   # LoRA; full fine-tuning wants ~1e-5
    eval_steps: int = Field(20, ge=1)       # validation every N steps (and at step 0)
    save_steps: int = Field(20, ge=1)       # checkpoint every N steps (resume point)
    early_stopping_patience: int | None = Field(None, ge=1)  # evals without improvement


class SftParams(TrainerParams):
    # MoE only: the load-balancing loss keeps experts in use; null uses the model's own value.
    router_aux_loss_coef: float | None = Field(None, ge=0.0)
    # Loss on assistant tokens only (needs a template with {% generation %} markers): the model
    # learns to answer, not to imitate prompts.
    assistant_only_loss: bool = True
    # Packing (best-fit decreasing, padding-free): no compute spent on padding.
    packing: bool = True


# --- reward models ---------------------------------------------------------------------------


class AspectParams(Section):
    # Preference rows whose `subset` is one of these train this aspect's reward model.
    subsets: list[str] = Field(min_length=1)


class RewardParams(TrainerParams):
    # One Bradley-Terry reward model per aspect (name -> the preference subsets it learns from);
    # `posttrain reward --aspect NAME` trains one, and the DAG has a stage per aspect.
    aspects: dict[str, AspectParams] = Field(default_factory=dict)
    # The model the reward model starts from: the SFT model (it already reads the chat format)
    # or the base.
    init: Literal["sft", "base"] = "sft"
    # Pulls the mean reward towards 0 (TRL's center_rewards_coefficient; 0.01 in the
    # InstructGPT-style setup), so scores stay comparable across runs. null: off.
    center_rewards_coefficient: float | None = Field(0.01, ge=0.0)
    # Training pairs scored after training for the reward mean/std that RL normalises with.
    stats_pairs: int = Field(256, ge=2)
    # The reward model reads the last `context_turns` messages of a conversation's history (plus
    # its system message) before the response; earlier turns are left out, as long HH-style
    # transcripts are usually judged by their last exchange. null: the whole history. Saved with
    # the model, so every scorer reads conversations the same way.
    context_turns: int | None = Field(None, ge=1)
    # Batches of pairs of similar length (transformers' group_by_length sampler, shuffled in
    # groups of 50 batches): a batch pads to its longest sequence, so random batches of
    # varied-length pairs spend a third or more of their compute on padding.
    group_by_length: bool = True
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-4, gt=0)

    @field_validator("aspects")
    @classmethod
    def _identifier_names(cls, aspects: dict[str, AspectParams]) -> dict[str, AspectParams]:
        bad = [n for n in aspects if not n.isidentifier()]
        if bad:
            raise ValueError(f"aspect names must be identifiers (they name DAG stages and folders): {bad}")
        return aspects


# --- reinforcement learning ------------------------------------------------------------------


class RewardSpec(Section):
    """One term of a stage's reward: a registry function (posttrain.verifiers.rewards) and its weight.
    `reward_model` terms name the reward model by `aspect` (results/reward/<aspect>)."""
    model_config = ConfigDict(extra="allow", validate_default=True)
    name: str
    weight: float = 1.0
    aspect: str | None = None

    @model_validator(mode="after")
    def _known(self) -> "RewardSpec":
        from posttrain.verifiers.rewards import REGISTRY

        if self.name not in REGISTRY:
            raise ValueError(f"unknown reward function {self.name!r}; known: {', '.join(sorted(REGISTRY))}")
        if (self.name == "reward_model") != (self.aspect is not None):
            raise ValueError("`aspect` names the reward model of a reward_model term, and only there")
        return self


class PpoParams(Section):
    """PPO settings of a stage with `algorithm: ppo` (posttrain.rl.ppo); GRPO stages ignore them."""
    # Optimisation passes over each rollout, and the mini-batches each pass is split into.
    epochs: int = Field(2, ge=1)
    mini_batches: int = Field(2, ge=1)
    clip_range: float = Field(0.2, gt=0)
    value_clip_range: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.5, ge=0)
    # GAE discount and trace decay (1.0 and 0.95 are the usual RLHF settings).
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    # Adaptive KL (Ziegler et al. 2019): the coefficient starts at the stage's `beta` and moves so
    # the per-sequence KL to the init model tracks this target. null: `beta` stays fixed.
    kl_target: float | None = Field(None, gt=0)
    kl_horizon: int = Field(10000, ge=1)
    # The critic: a value head initialised from this aspect's reward model (its LoRA and score
    # head keep training). null: the aspect of the stage's first reward_model term.
    critic: str | None = None
    critic_learning_rate: float | None = Field(None, gt=0)   # null: the stage's learning_rate
    # Where the critic's base weights live. shared: the reward model's LoRA becomes a second
    # adapter on the policy's own model (one copy of the base for policy, reference and critic;
    # needs a LoRA reward model trained from the stage's init model); copy: a separate copy of the
    # reward model; auto: shared when possible.
    critic_base: Literal["auto", "shared", "copy"] = "auto"


class RlStageParams(Section):
    # The stage's name: its DAG stage is rl_<name>, its output results/rl/<name>/.
    name: str
    # grpo: TRL's GRPOTrainer (group-normalised rewards, no critic); ppo: posttrain.rl.ppo (a
    # critic initialised from a reward model, GAE, clipped losses; settings under `ppo`);
    # rejection_sampling: the init model answers every prompt num_generations times, the answers
    # whose reward reaches min_reward are kept (keep_per_prompt per prompt) and fine-tuned on
    # (TRL's SFTTrainer, loss on the answer): expert iteration / RFT. Two such stages in a row
    # are two rounds.
    algorithm: Literal["grpo", "ppo", "rejection_sampling"] = "grpo"
    # The model the stage starts from: `previous` (the stage before it; the first starts from
    # sft), `sft`, `base`, or an earlier stage's name.
    init: str = "previous"
    # Prompt rows (results/data/prompts) whose subset is one of these.
    subsets: list[str] = Field(min_length=1)
    # Replaces the prompts' own system turn (e.g. the R1-Zero instruction to reason in
    # <think>...</think> before answering); null keeps the prompts as they are.
    system_prompt: str | None = None
    rewards: list[RewardSpec] = Field(min_length=1)
    max_steps: int = Field(20, ge=1)
    # Prompts per optimisation step; each gets `num_generations` sampled completions (the group
    # GRPO normalises rewards within; at least 2 for GRPO, any number for PPO). rejection_sampling:
    # accepted answers per optimisation step (num_generations: samples drawn per prompt).
    prompts_per_step: int = Field(4, ge=1)
    num_generations: int = Field(4, ge=1)
    max_completion_length: int = Field(128, ge=4)
    # This stage's adapter settings over rl.lora's, key by key (e.g. {layers: null}: every layer
    # where the stages share the top 8); null: rl.lora as it is.
    lora: dict[str, Any] | None = None
    # A step's prompts_per_step x num_generations completions are sampled and scored together,
    # then trained in this many micro-batches (gradient accumulation): the same optimiser step
    # with a fraction of the backward pass's memory. GRPO only (PPO has ppo.mini_batches).
    micro_batches: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    # KL penalty to the init model (the adapter switched off: no second copy in memory).
    beta: float = Field(0.04, ge=0)
    learning_rate: float = Field(1e-5, gt=0)
    # TRL loss types: grpo (per-sequence mean), dapo (token-level), dr_grpo (no length bias), bnpo.
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    # Completions cut off at max_completion_length teach nothing (DAPO's overlong filtering):
    # a model that never stops cannot learn that rambling pays.
    mask_truncated_completions: bool = False
    # A checkpoint every N steps; each is scored on the stage's held-out prompts (greedy, the
    # stage's rewards) and the best one, step 0 included, becomes the stage's model.
    save_steps: int = Field(5, ge=1)
    seed: int = 0
    ppo: PpoParams = Field(default_factory=PpoParams)
    # rejection_sampling: an answer is kept when its weighted reward reaches min_reward; at most
    # keep_per_prompt distinct answers per prompt (GRPO and PPO ignore both).
    min_reward: float = 1.0
    keep_per_prompt: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _group(self) -> "RlStageParams":
        if self.algorithm == "grpo" and self.num_generations < 2:
            raise ValueError(f"rl stage {self.name!r}: GRPO compares completions within a group; num_generations "
                             f"must be at least 2 (got {self.num_generations})")
        if self.micro_batches > 1 and self.algorithm == "ppo":
            raise ValueError(f"rl stage {self.name!r}: PPO splits its batch with ppo.mini_batches, not "
                             f"micro_batches")
        self.per_device_batch(1)
        if self.algorithm == "ppo" and self.ppo.critic is None and not any(r.aspect for r in self.rewards):
            raise ValueError(f"rl stage {self.name!r}: PPO initialises its critic from a reward model; add a "
                             f"reward_model term or set ppo.critic to an aspect")
        return self

    def per_device_batch(self, processes: int) -> int:
        """Completions each process trains on at a time: the step's prompts x generations (a
        rejection_sampling step: its prompts_per_step answers) split over the processes of a
        multi-GPU run and the micro-batches (TRL's per-device batch is multiplied by both, so the
        step stays the size declared here)."""
        sampled = self.algorithm == "rejection_sampling"
        completions = self.prompts_per_step * (1 if sampled else self.num_generations)
        parts = processes * self.micro_batches
        if completions % parts:
            what = "prompts_per_step" if sampled else "prompts_per_step x num_generations"
            raise ValueError(f"rl stage {self.name!r}: its {completions} completions a step ({what}) do not split "
                             f"over {processes} process(es) x {self.micro_batches} micro_batches; make {what} a "
                             f"multiple of {parts}")
        return completions // parts

    @field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not name.isidentifier():
            raise ValueError(f"stage names must be identifiers (they name DAG stages and folders): {name!r}")
        if name in ("base", "sft", "zero", "rl_zero", "student_sft", "distilled"):
            raise ValueError(f"{name!r} is taken (models base, sft, student_sft and distilled, the RL-first path "
                             f"zero); choose another name")
        return name


class RlParams(TrainingParams):
    """Settings every RL stage shares (adapters, precision, devices, vLLM); the stages say what
    each optimises."""
    stages: list[RlStageParams] = Field(default_factory=list)
    # The RL-first path (DeepSeek-R1-Zero style): one stage straight from the base model,
    # written to results/rl_zero/. null: off.
    zero: RlStageParams | None = None
    # Generation with vLLM inside the training process (colocate) or a server: GPU only.
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    # Held-out prompts scored per checkpoint for model selection (greedy).
    selection_prompts: int = Field(32, ge=1)

    def lora_for(self, st: RlStageParams) -> LoraParams:
        """The adapter a stage trains: rl.lora with the stage's own `lora` keys over it."""
        return LoraParams(**{**self.lora.model_dump(), **(st.lora or {})})

    @model_validator(mode="after")
    def _stage_graph(self) -> "RlParams":
        for st in [*self.stages, *([self.zero] if self.zero else [])]:
            try:
                self.lora_for(st)
            except ValidationError as err:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                raise ValueError(f"rl stage {st.name!r}: lora: {problems}") from None
            if st.algorithm != "ppo":   # GRPO and RFT run a process per GPU (PPO one process over them all)
                st.per_device_batch(max(1, self.gpus))
        seen: list[str] = []
        for st in self.stages:
            if st.name in seen:
                raise ValueError(f"two rl stages are named {st.name!r}")
            if st.init not in ("previous", "sft", "base") and st.init not in seen:
                raise ValueError(f"rl stage {st.name!r}: init {st.init!r} is not previous, sft, base or an "
                                 f"earlier stage ({', '.join(seen) or 'none'})")
            seen.append(st.name)
        if self.zero is not None and self.zero.init not in ("previous", "base"):
            raise ValueError("rl.zero starts from the base model; leave its init unset")
        return self


# --- distillation ----------------------------------------------------------------------------


class StudentParams(Section):
    # prune: a depth-pruned copy of the base model (works offline); otherwise a hub id or local
    # folder of a smaller model that shares the base's tokenizer.
    model: str = "prune"
    revision: str | None = None
    # prune: whose layers the student keeps. base: the base model's; teacher: the trained
    # teacher's (Minitron-style: the student starts with what post-training taught, and the
    # baseline student then trains from the same weights).
    prune_from: Literal["base", "teacher"] = "base"
    # prune: keep layers 0, k, 2k, ... and always the last one (the layers next to the output
    # matter most); 2 halves the depth.
    keep_every: int = Field(2, ge=2)
    # prune: the layer indices to keep, instead of keep_every (null: use keep_every).
    layers: list[int] | None = Field(None, min_length=1)
    # prune: drop the N layers whose removal alone raises perplexity least, measured on
    # `calibration_rows` SFT validation rows (instead of keep_every; ShortGPT-style). Small
    # models are far less redundant than 7B ones: which layers go matters more than how many.
    drop_least_important: int | None = Field(None, ge=1)
    calibration_rows: int = Field(16, ge=1)
    # rank on the SFT validation rows of these subsets only (null: all): the skill the student
    # must keep decides which layers matter (general text hides the layers that do arithmetic).
    calibration_subsets: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_rule(self) -> "StudentParams":
        if self.layers is not None and self.drop_least_important is not None:
            raise ValueError("set either student.layers or student.drop_least_important, not both")
        return self


class SamplingParams(Section):
    """Rejection sampling (R1-style): the teacher answers the RL prompts, verifiers keep the
    answers that pass."""
    # Prompt rows (results/data/prompts) whose subset is one of these.
    subsets: list[str] = Field(default_factory=lambda: ["arithmetic"], min_length=1)
    per_prompt: int = Field(4, ge=1)            # samples drawn per prompt
    keep_per_prompt: int = Field(1, ge=1)       # accepted answers kept per prompt (distinct texts)
    temperature: float = Field(0.8, ge=0)
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(16, ge=1)
    # The verifiers (posttrain.verifiers.rewards, weighted sum; None terms skipped); an answer is kept
    # when its score reaches min_reward. A row no term can score is rejected as unverifiable.
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="accuracy", marked_only=True)],
                                      min_length=1)
    min_reward: float = 1.0
    seed: int = 0

    @field_validator("rewards")
    @classmethod
    def _no_reward_models(cls, rewards: list[RewardSpec]) -> list[RewardSpec]:
        if any(r.aspect for r in rewards):
            raise ValueError("rejection sampling verifies with rule rewards (accuracy, refusal, constraint, ...); "
                             "reward_model terms are not supported here")
        return rewards


class DistillParams(SftParams):
    """A smaller student that inherits the teacher's skills. The training fields (inherited
    from sft) train both the distilled student and the baseline student trained by plain SFT
    on the original data, so the two differ only in what they learn from."""
    # The teacher: `last` (the last RL stage; sft when there are none), sft, base, or a stage name.
    teacher: str = "last"
    student: StudentParams = Field(default_factory=StudentParams)
    # sequence-level: cross-entropy on the teacher's accepted answers (and the SFT data when
    # include_sft_data); logit-level: the same data, plus matching the teacher's token distributions.
    level: Literal["sequence", "logit"] = "logit"
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    include_sft_data: bool = True
    # logit: loss = kd_weight * divergence + (1 - kd_weight) * cross-entropy; the divergence is
    # the generalised Jensen-Shannon of GKD (kd_beta 0: forward KL, 1: reverse KL) at kd_temperature.
    kd_weight: float = Field(0.5, ge=0, le=1)
    kd_beta: float = Field(0.0, ge=0, le=1)
    kd_temperature: float = Field(1.0, gt=0)
    # A pruned student has layers to re-learn: full fine-tuning by default.
    method: Literal["lora", "qlora", "full"] = "full"
    learning_rate: float = Field(5e-5, gt=0)


# --- export ----------------------------------------------------------------------------------


class CalibratedQuantParams(Section):
    """What GPTQModel's calibrated 4-bit quantizers (GPTQ, AWQ) share."""
    # weights per scale/zero group: smaller groups cost size and keep more quality
    group_size: int = Field(128, ge=-1)
    # calibration: the SFT train rows (chat template applied), of these subsets only when set
    calibration_rows: int = Field(256, ge=1)
    calibration_max_length: int = Field(256, ge=16)
    calibration_subsets: list[str] | None = Field(None, min_length=1)
    batch_size: int = Field(1, ge=1)
    # GPTQModel parks quantized layers on disk while it works through the model: needed where the
    # model does not fit in memory (a 30B MoE), slower otherwise.
    offload_to_disk: bool = False


class GptqParams(CalibratedQuantParams):
    """4-bit GPTQ with GPTQModel: what vLLM, transformers and optimum load as `quant_method: gptq`."""
    bits: Literal[2, 3, 4, 8] = 4
    desc_act: bool = False       # act-order: better quality, slower kernels on some servers
    sym: bool = True
    damp_percent: float = Field(0.05, gt=0, lt=1)


class AwqParams(CalibratedQuantParams):
    """4-bit AWQ (activation-aware scales, asymmetric, GEMM layout) with GPTQModel: what vLLM
    loads as `quant_method: awq` (its Marlin kernels on recent GPUs). Saved in float16, the
    dtype vLLM's AWQ kernels compute in."""
    bits: Literal[4] = 4


class GgufParams(Section):
    """A GGUF file (llama.cpp, Ollama, LM Studio, vLLM's GGUF loader) of the merged export;
    dense llama, mistral, qwen2 and qwen3 models."""
    # the type of the 2-D weights: f16, q8_0 (8.5 bits/weight, near lossless), q5_1, q5_0,
    # q4_1 (5 bits: a scale and a minimum per 32 weights), q4_0 (4.5 bits)
    type: Literal["f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"] = "q8_0"
    # the token embedding's (and an untied output head's) type: null keeps `type`
    embeddings: Literal["f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"] | None = None
    # llama.cpp's pre-tokenizer name (tokenizer.ggml.pre: llama-bpe, qwen2, smollm, ...); null lets
    # llama.cpp use its default regex (it warns); transformers ignores it
    tokenizer_pre: str | None = None


class GgufLoraParams(GgufParams):
    """The exported model's base as a GGUF file and its LoRA adapter as a llama.cpp GGUF adapter,
    applied when the server loads them (`llama-server -m BASE --lora ADAPTER`): the fine-tune
    keeps full precision beside a 4-bit base, where quantizing the merged weights can round a
    small fine-tune away. Needs a model with a LoRA adapter (SFT, an RL stage)."""
    type: Literal["f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"] = "q4_1"
    # the adapter's A and B matrices: f32, f16 or q8_0 (what llama.cpp loads; B's rank-wide rows
    # do not split into 32-weight blocks and stay f16)
    adapter_type: Literal["f32", "f16", "q8_0"] = "q8_0"


class ExportParams(Section):
    """Serving artifacts for one model of the DAG: merged weights, then quantized formats."""
    # which model: `last` (the last RL stage; sft, then base, without RL stages), sft, base, an
    # RL stage's name, rl_zero, distilled or student_sft.
    model: str = "last"
    # the merged (adapters folded in) model's dtype; the quantizers start from it.
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    formats: list[Literal["gptq", "awq", "gguf", "gguf_lora"]] = Field(default_factory=lambda: ["gptq"])
    gptq: GptqParams = Field(default_factory=GptqParams)
    awq: AwqParams = Field(default_factory=AwqParams)
    gguf: GgufParams = Field(default_factory=GgufParams)
    gguf_lora: GgufLoraParams = Field(default_factory=GgufLoraParams)
    # Written into the model card's `vllm serve` line and generation_config.json.
    max_model_len: int = Field(4096, ge=16)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    seed: int = 0


# --- evaluate --------------------------------------------------------------------------------


class EvaluateParams(Section):
    # Greedy decoding, so reruns give identical numbers on CPU. Arithmetic worked solutions are
    # ~40 tokens; 96 leaves room without letting a rambling model dominate the run time.
    max_new_tokens: int = Field(96, ge=1)
    # Refusals show in the first sentence; safety prompts need fewer tokens.
    safety_max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(8, ge=1)
    # Rows per task; a limited run is marked `partial` in its metrics and in the report.
    limit: int | None = Field(None, ge=1)
    # Standard lm-eval tasks by name (e.g. gsm8k, ifeval): production only, their data needs the hub.
    harness_tasks: list[str] = Field(default_factory=list)
    # Held-out SFT rows scored for perplexity (0 turns it off).
    perplexity_rows: int = Field(100, ge=0)
    # Responses a reward model scores at once. Batches are sorted by length and padded to their
    # longest row: on the demo's 80 responses per model, 64 at once scored 1.2x the real tokens and
    # took 15.2 s, 16 at once 11.4 s (one core).
    reward_batch_size: int = Field(16, ge=1)
    # Which responses each reward model scores (`<aspect>_rm_score`, the mean normalised score):
    # eval subsets by aspect. An aspect not listed scores every non-arithmetic response.
    rm_subsets: dict[str, list[str]] = Field(default_factory=lambda: {
        "helpful": ["format", "benign"], "safety": ["harmful", "benign"]})
    # win_rate_vs_reference: how often this aspect's reward model prefers a model's response to
    # the reference model's response to the same prompt (ties count half).
    reference: str = "sft"
    win_rate_aspect: str = "helpful"
    seed: int = 0


# --- cluster resources ------------------------------------------------------------------------


class JobResources(Section):
    """What one rule asks the scheduler for. Under `snakemake --profile slurm` the SLURM executor
    plugin turns these into sbatch flags; locally only `cpus_per_task` (the rule's threads)
    matters. Unset fields fall back to `resources.default`, then to the profile's
    default-resources."""
    gpu: int | None = Field(None, ge=0)            # --gpus=N (a training stage: its `gpus` when unset)
    gpu_model: str | None = None                   # --gpus=MODEL:N (e.g. h100)
    cpus_per_task: int | None = Field(None, ge=1)  # --cpus-per-task, and the rule's threads
    cpus_per_gpu: int | None = Field(None, ge=1)   # --cpus-per-gpu (GPU jobs)
    mem_mb: int | None = Field(None, ge=1)         # --mem
    runtime: int | None = Field(None, ge=1)        # --time, in minutes
    partition: str | None = None                   # --partition
    account: str | None = None                     # --account
    extra: str | None = None                       # any other sbatch flags, verbatim
    # Training stages across nodes: `gpu` is then GPUs per node; the rule runs one accelerate
    # launcher per node through srun (the plugin's `mpi: srun` pattern).
    nodes: int | None = Field(None, ge=1)


class ResourcesParams(Section):
    # Every rule's resources: `default`, then the entry for its stage kind (sft, reward, rl,
    # distill, distill_samples, student_base, evaluate, export_merge, export_gptq, prepare_data,
    # demo_data, base_model, report, export_check), then the entry for its exact rule name
    # (rl_reasoning, evaluate_sft), each overriding the fields it sets. Not part of any stage's
    # parameters: changing them reruns nothing.
    default: JobResources = Field(default_factory=JobResources)
    stages: dict[str, JobResources] = Field(default_factory=dict)
    # Training jobs ask SLURM for SIGUSR1 this many seconds before their time limit; the trainer
    # then saves a checkpoint and exits, and Snakemake's retry resumes from it. null: no signal.
    signal_seconds: int | None = Field(300, ge=10)


class Params(Section):
    model: ModelParams = Field(default_factory=ModelParams)
    demo_data: DemoDataParams = Field(default_factory=DemoDataParams)
    data: DataParams = Field(default_factory=DataParams)
    sft: SftParams = Field(default_factory=SftParams)
    reward: RewardParams = Field(default_factory=RewardParams)
    rl: RlParams = Field(default_factory=RlParams)
    # null: no distillation stages in the DAG.
    distill: DistillParams | None = None
    # null: no export stages in the DAG.
    export: ExportParams | None = None
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    # What each rule asks a cluster scheduler for (`snakemake --profile slurm`).
    resources: ResourcesParams = Field(default_factory=ResourcesParams)


# --- loading ---------------------------------------------------------------------------------


def deep_merge(base: dict, overlay: dict, origin: dict[str, str], source: str, prefix: str = "") -> dict:
    """Merge `overlay` into a copy of `base` (dicts recursively, everything else replaced),
    recording in `origin` which file set each dotted key."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, origin, source, dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
            _mark(origin, dotted, value, source)
    return out


def _mark(origin: dict[str, str], dotted: str, value: Any, source: str) -> None:
    origin[dotted] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(origin, f"{dotted}.{k}", v, source)


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"parameter file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def validate(raw: dict, origin: dict[str, str] | None = None) -> Params:
    """Validate a merged parameter dict; raise ConfigError naming every bad key."""
    origin = origin or {}
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err, origin)) from None


def _explain(err: ValidationError, origin: dict[str, str]) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        dotted = ".".join(loc)
        where = _origin_of(loc, origin)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            lines.append(f"unknown key '{dotted}'{where}; allowed here: {', '.join(allowed)}")
        else:
            got = e.get("input")
            got = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            lines.append(f"'{dotted}'{where}: {e['msg']}{got}")
    return "invalid parameters:\n  " + "\n  ".join(lines)


def _origin_of(loc: list[str], origin: dict[str, str]) -> str:
    for n in range(len(loc), 0, -1):
        src = origin.get(".".join(loc[:n]))
        if src:
            return f" in {src}"
    return ""


def _allowed_keys(loc: list[str]) -> list[str]:
    """Field names of the schema section at `loc` (list indices and dict keys skipped)."""
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            continue  # a list index or a free-form dict key: stay on the item's model
        inner = _model_in(field.annotation)
        if inner is None:
            return []
        model = inner
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def load_params(files: list[str | Path] | None = None) -> Params:
    """Load `params.yaml` and overlays in order (later files win) and validate the result."""
    files = [Path(f) for f in (files or [DEFAULT_PARAMS])]
    merged: dict = {}
    origin: dict[str, str] = {}
    for f in files:
        merged = deep_merge(merged, read_yaml(f), origin, str(f))
    return validate(merged, origin)


def section(params: Params, name: str) -> dict:
    """The resolved section as plain data, as recorded in manifests."""
    return getattr(params, name).model_dump(mode="json")
