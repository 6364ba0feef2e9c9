"""`reward:` the Bradley-Terry reward models, one per aspect."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from posttrain.config.base import Section
from posttrain.config.training import TrainerParams


class AspectParams(Section):
    """One reward model: what it learns from."""
    subsets: list[str] = Field(min_length=1, description=(
        "Preference rows whose `subset` is one of these train this aspect's reward model."))


class RewardParams(TrainerParams):
    """Reward models (TRL's RewardTrainer) that score responses for the RL stages and evaluation."""
    aspects: dict[str, AspectParams] = Field(default_factory=dict, description=(
        "One Bradley-Terry reward model per aspect (name -> the preference subsets it learns from); `posttrain "
        "reward --aspect NAME` trains one, and the DAG has a stage per aspect. Names must be identifiers."))
    init: Literal["sft", "base"] = Field("sft", description=(
        "The model the reward model starts from: the SFT model (it already reads the chat format) or the base."))
    center_rewards_coefficient: float | None = Field(0.01, ge=0.0, description=(
        "Pulls the mean reward towards 0 (TRL's center_rewards_coefficient; 0.01 in the InstructGPT-style setup), "
        "so scores stay comparable across runs. null: off."))
    stats_pairs: int = Field(256, ge=2, description=(
        "Training pairs scored after training for the reward mean/std that RL normalises with."))
    context_turns: int | None = Field(None, ge=1, description=(
        "The reward model reads the last `context_turns` messages of a conversation's history (plus its system "
        "message) before the response; earlier turns are left out, as long HH-style transcripts are usually judged "
        "by their last exchange. null: the whole history. Saved with the model, so every scorer reads "
        "conversations the same way."))
    group_by_length: bool = Field(True, description=(
        "Batches of pairs of similar length (transformers' group_by_length sampler, shuffled in groups of 50 "
        "batches): a batch pads to its longest sequence, so random batches of varied-length pairs spend a third or "
        "more of their compute on padding."))
    batch_size: int = Field(8, ge=1, description="Preference pairs per device per step.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")

    @field_validator("aspects")
    @classmethod
    def _identifier_names(cls, aspects: dict[str, AspectParams]) -> dict[str, AspectParams]:
        bad = [n for n in aspects if not n.isidentifier()]
        if bad:
            raise ValueError(f"aspect names must be identifiers (they name DAG stages and folders): {bad}")
        return aspects
