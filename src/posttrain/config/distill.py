"""`distill:` a smaller student taught by the post-trained teacher."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from posttrain.config.base import Section
from posttrain.config.rl import RewardSpec
from posttrain.config.sft import SftParams


class StudentParams(Section):
    """The student before training: a depth-pruned copy of the base (or teacher), or a smaller model."""
    model: str = Field("prune", description=(
        "prune: a depth-pruned copy of the base model (works offline); otherwise a hub id or local folder of a "
        "smaller model that shares the base's tokenizer."))
    revision: str | None = Field(None, description="A hub commit sha or tag of a hub student; ignored otherwise.")
    prune_from: Literal["base", "teacher"] = Field("base", description=(
        "prune: whose layers the student keeps. base: the base model's; teacher: the trained teacher's "
        "(Minitron-style: the student starts with what post-training taught, and the baseline student then trains "
        "from the same weights)."))
    keep_every: int = Field(2, ge=2, description=(
        "prune: keep layers 0, k, 2k, ... and always the last one (the layers next to the output matter most); 2 "
        "halves the depth."))
    layers: list[int] | None = Field(None, min_length=1, description=(
        "prune: the layer indices to keep, instead of keep_every (null: use keep_every)."))
    drop_least_important: int | None = Field(None, ge=1, description=(
        "prune: drop the N layers whose removal alone raises perplexity least, measured on `calibration_rows` SFT "
        "validation rows (instead of keep_every; ShortGPT-style). Small models are far less redundant than 7B "
        "ones: which layers go matters more than how many."))
    calibration_rows: int = Field(16, ge=1, description=(
        "drop_least_important: the SFT validation rows each layer's importance is measured on."))
    calibration_subsets: list[str] | None = Field(None, min_length=1, description=(
        "drop_least_important: rank on the SFT validation rows of these subsets only (null: all): the skill the "
        "student must keep decides which layers matter (general text hides the layers that do arithmetic)."))
    ranking_dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "drop_least_important: the dtype of the ranking's forward passes; as evaluate.dtype (auto: bfloat16 on a "
        "CPU that multiplies it natively). The student keeps the weights' own dtype."))

    @model_validator(mode="after")
    def _one_rule(self) -> StudentParams:
        if self.layers is not None and self.drop_least_important is not None:
            raise ValueError("set either student.layers or student.drop_least_important, not both")
        return self


class SamplingParams(Section):
    """Rejection sampling (R1-style): the teacher answers the RL prompts, verifiers keep the
    answers that pass."""
    subsets: list[str] = Field(default_factory=lambda: ["arithmetic"], min_length=1, description=(
        "Prompt rows (results/data/prompts) whose subset is one of these."))
    per_prompt: int = Field(4, ge=1, description="Samples drawn per prompt.")
    keep_per_prompt: int = Field(1, ge=1, description="Accepted answers kept per prompt (distinct texts).")
    temperature: float = Field(0.8, ge=0, description="The teacher's sampling temperature (0: greedy).")
    max_new_tokens: int = Field(128, ge=1, description="The most tokens the teacher writes per answer.")
    batch_size: int = Field(16, ge=1, description="Answers the teacher generates at once.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "The dtype the teacher samples in; as evaluate.dtype (auto: bfloat16 on a CPU that multiplies it natively)."))
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="accuracy", marked_only=True)],
                                      min_length=1, description=(
        "The verifiers (posttrain.verifiers.rewards, weighted sum; None terms skipped); an answer is kept when its "
        "score reaches min_reward. A row no term can score is rejected as unverifiable. Rule rewards only (no "
        "reward_model terms)."))
    min_reward: float = Field(1.0, description="An answer is kept when its weighted score reaches this.")
    seed: int = Field(0, description="Seeds the teacher's sampling.")

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
    teacher: str = Field("last", description=(
        "The teacher: `last` (the last RL stage; sft when there are none), sft, base, or a stage name."))
    student: StudentParams = Field(default_factory=StudentParams, description="The student's starting point.")
    level: Literal["sequence", "logit"] = Field("logit", description=(
        "sequence-level: cross-entropy on the teacher's accepted answers (and the SFT data when include_sft_data); "
        "logit-level: the same data, plus matching the teacher's token distributions."))
    sampling: SamplingParams = Field(default_factory=SamplingParams, description=(
        "How the teacher's answers are sampled and verified."))
    include_sft_data: bool = Field(True, description=(
        "Train the distilled student on the SFT data too, besides the teacher's accepted answers."))
    kd_weight: float = Field(0.5, ge=0, le=1, description=(
        "logit: loss = kd_weight * divergence + (1 - kd_weight) * cross-entropy."))
    kd_beta: float = Field(0.0, ge=0, le=1, description=(
        "logit: the divergence is the generalised Jensen-Shannon of GKD; kd_beta 0: forward KL, 1: reverse KL."))
    kd_temperature: float = Field(1.0, gt=0, description=(
        "logit: the temperature both distributions are softened with before the divergence."))
    method: Literal["lora", "qlora", "full"] = Field("full", description=(
        "A pruned student has layers to re-learn: full fine-tuning by default (lora, qlora: adapters)."))
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate (full fine-tuning).")
