"""`rl:` the reinforcement-learning stages (GRPO, PPO, rejection sampling) and the RL-first path."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from posttrain.config.base import Section
from posttrain.config.training import LoraParams, TrainingParams


class RewardSpec(Section):
    """One term of a stage's reward: a registry function (posttrain.verifiers.rewards) and its weight.
    `reward_model` terms name the reward model by `aspect` (`results/reward/<aspect>`). Any other key is
    an option of the function (e.g. `marked_only: true` for accuracy)."""
    # extra="allow": the options differ per reward function; verifiers.rewards.build checks them.
    model_config = ConfigDict(extra="allow", validate_default=True)
    name: str = Field(description=(
        "A reward function of the registry in `posttrain.verifiers.rewards`."))
    weight: float = Field(1.0, description="The term's weight in the sum (terms that return None are skipped).")
    aspect: str | None = Field(None, description=(
        "`reward_model` terms only: the aspect whose reward model (`results/reward/<aspect>`) scores."))

    @model_validator(mode="after")
    def _known(self) -> RewardSpec:
        from posttrain.verifiers.rewards import REGISTRY

        if self.name not in REGISTRY:
            raise ValueError(f"unknown reward function {self.name!r}; known: {', '.join(sorted(REGISTRY))}")
        if (self.name == "reward_model") != (self.aspect is not None):
            raise ValueError("`aspect` names the reward model of a reward_model term, and only there")
        return self


class PpoParams(Section):
    """PPO settings of a stage with `algorithm: ppo` (posttrain.rl.ppo); GRPO stages ignore them."""
    epochs: int = Field(2, ge=1, description="Optimisation passes over each rollout.")
    mini_batches: int = Field(2, ge=1, description="Mini-batches each pass over a rollout is split into.")
    clip_range: float = Field(0.2, gt=0, description="The policy ratio is clipped to 1 +/- clip_range.")
    value_clip_range: float = Field(0.2, gt=0, description=(
        "New value estimates are clipped to the rollout's values +/- value_clip_range."))
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss in the total loss.")
    gamma: float = Field(1.0, ge=0, le=1, description=(
        "GAE discount (1.0, with lam 0.95, is the usual RLHF setting)."))
    lam: float = Field(0.95, ge=0, le=1, description=(
        "GAE trace decay (0.95, with gamma 1.0, is the usual RLHF setting)."))
    kl_target: float | None = Field(None, gt=0, description=(
        "Adaptive KL (Ziegler et al. 2019): the coefficient starts at the stage's `beta` and moves so the "
        "per-sequence KL to the init model tracks this target. null: `beta` stays fixed."))
    kl_horizon: int = Field(10000, ge=1, description=(
        "Adaptive KL's horizon: larger moves the coefficient more slowly."))
    critic: str | None = Field(None, description=(
        "The critic: a value head initialised from this aspect's reward model (its LoRA and score head keep "
        "training). null: the aspect of the stage's first reward_model term."))
    critic_learning_rate: float | None = Field(None, gt=0, description=(
        "The critic's learning rate; null: the stage's learning_rate."))
    critic_base: Literal["auto", "shared", "copy"] = Field("auto", description=(
        "Where the critic's base weights live. shared: the reward model's LoRA becomes a second adapter on the "
        "policy's own model (one copy of the base for policy, reference and critic; needs a LoRA reward model "
        "trained from the stage's init model); copy: a separate copy of the reward model; auto: shared when "
        "possible."))


class RlStageParams(Section):
    """One RL stage: what it optimises, from which model, on which prompts."""
    name: str = Field(description=(
        "The stage's name: its DAG stage is `rl_<name>`, its output `results/rl/<name>/`. An identifier; not base, "
        "sft, zero, rl_zero, student_sft or distilled."))
    algorithm: Literal["grpo", "ppo", "rejection_sampling"] = Field("grpo", description=(
        "grpo: TRL's GRPOTrainer (group-normalised rewards, no critic); ppo: posttrain.rl.ppo (a critic initialised "
        "from a reward model, GAE, clipped losses; settings under `ppo`); rejection_sampling: the init model "
        "answers every prompt num_generations times, the answers whose reward reaches min_reward are kept "
        "(keep_per_prompt per prompt) and fine-tuned on (TRL's SFTTrainer, loss on the answer): expert iteration / "
        "RFT. Two such stages in a row are two rounds."))
    init: str = Field("previous", description=(
        "The model the stage starts from: `previous` (the stage before it; the first starts from sft), `sft`, "
        "`base`, or an earlier stage's name."))
    subsets: list[str] = Field(min_length=1, description=(
        "Prompt rows (results/data/prompts) whose subset is one of these."))
    system_prompt: str | None = Field(None, description=(
        "Replaces the prompts' own system turn (e.g. the R1-Zero instruction to reason in `<think>...</think>` "
        "before answering); null keeps the prompts as they are."))
    rewards: list[RewardSpec] = Field(min_length=1, description=(
        "The stage's reward: the weighted sum of these terms."))
    max_steps: int = Field(20, ge=1, description="Optimisation steps.")
    prompts_per_step: int = Field(4, ge=1, description=(
        "Prompts per optimisation step; each gets `num_generations` sampled completions (the group GRPO normalises "
        "rewards within). rejection_sampling: accepted answers per optimisation step."))
    num_generations: int = Field(4, ge=1, description=(
        "Completions sampled per prompt: at least 2 for GRPO, any number for PPO. rejection_sampling: samples drawn "
        "per prompt."))
    max_completion_length: int = Field(128, ge=4, description="The most tokens sampled per completion.")
    lora: dict[str, Any] | None = Field(None, description=(
        "This stage's adapter settings over rl.lora's, key by key (e.g. `{layers: null}`: every layer where the "
        "stages share the top 8); null: rl.lora as it is."))
    micro_batches: int = Field(1, ge=1, description=(
        "A step's prompts_per_step x num_generations completions are sampled and scored together, then trained in "
        "this many micro-batches (gradient accumulation): the same optimiser step with a fraction of the backward "
        "pass's memory. GRPO only (PPO has ppo.mini_batches)."))
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    beta: float = Field(0.04, ge=0, description=(
        "KL penalty to the init model (the adapter switched off: no second copy in memory)."))
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field("dapo", description=(
        "TRL loss types: grpo (per-sequence mean), dapo (token-level), dr_grpo (no length bias), bnpo."))
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description=(
        "GRPO: what a completion's reward minus its group's mean is divided by: the group's standard deviation "
        "(group), the whole batch's (batch: a group whose completions differ only a little on one reward keeps "
        "a small advantage instead of one scaled up to a unit, so a rare verifier signal is not drowned by "
        "reward-model noise in the other groups), or nothing (none, Dr. GRPO)."))
    mask_truncated_completions: bool = Field(False, description=(
        "Completions cut off at max_completion_length teach nothing (DAPO's overlong filtering): a model that never "
        "stops cannot learn that rambling pays."))
    save_steps: int = Field(5, ge=1, description=(
        "A checkpoint every N steps; each is scored on the stage's held-out prompts (greedy, the stage's rewards) "
        "and the best one, step 0 included, becomes the stage's model."))
    seed: int | None = Field(None, description=(
        "Seeds prompt order, sampling and initialisation of this stage. Unset: rl.seed, so one key reseeds every "
        "RL stage (a seeded repeat: `dvc exp run -S rl.seed=1`)."))
    ppo: PpoParams = Field(default_factory=PpoParams, description="PPO settings (algorithm: ppo only).")
    min_reward: float = Field(1.0, description=(
        "rejection_sampling: an answer is kept when its weighted reward reaches min_reward (GRPO and PPO ignore "
        "it)."))
    keep_per_prompt: int = Field(1, ge=1, description=(
        "rejection_sampling: at most this many distinct answers kept per prompt (GRPO and PPO ignore it)."))

    @model_validator(mode="after")
    def _group(self) -> RlStageParams:
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
    stages: list[RlStageParams] = Field(default_factory=list, description=(
        "The RL stages, in order; each is a DAG stage `rl_<name>`. Empty: no RL stages."))
    zero: RlStageParams | None = Field(None, description=(
        "The RL-first path (DeepSeek-R1-Zero style): one stage straight from the base model, written to "
        "results/rl_zero/. null: off."))
    use_vllm: bool = Field(False, description=(
        "Generation with vLLM inside the training process (colocate) or a server: GPU only."))
    vllm_mode: Literal["colocate", "server"] = Field("colocate", description=(
        "colocate: vLLM runs inside the training process and shares its GPUs; server: a separate vLLM server."))
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description=(
        "colocate: the share of GPU memory vLLM may take (the rest is for training)."))
    vllm_tensor_parallel_size: int = Field(1, ge=1, description=(
        "colocate: the GPUs one vLLM engine spreads the model over. Each group of this many training processes "
        "shares an engine; a model whose bf16 weights exceed vllm_gpu_memory_utilization of one GPU needs more than "
        "1 (Qwen3-30B-A3B: ~61 GB, so 4 on 80 GB GPUs at 0.3)."))
    vllm_enable_sleep_mode: bool = Field(False, description=(
        "colocate: vLLM offloads its weights and cache while the policy trains, and wakes to generate: less GPU "
        "memory for training's peak, at the cost of a host-device copy per step."))
    selection_prompts: int = Field(32, ge=1, description=(
        "Held-out prompts scored per checkpoint for model selection (greedy)."))

    def lora_for(self, st: RlStageParams) -> LoraParams:
        """The adapter a stage trains: rl.lora with the stage's own `lora` keys over it."""
        return self.lora_with(st.lora, f"rl stage {st.name!r}")

    @model_validator(mode="after")
    def _stage_graph(self) -> RlParams:
        for st in [*self.stages, *([self.zero] if self.zero else [])]:
            if st.seed is None:
                st.seed = self.seed
            self.lora_for(st)
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
