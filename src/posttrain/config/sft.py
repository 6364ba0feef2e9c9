"""`sft:` supervised fine-tuning of the base model."""

from __future__ import annotations

from pydantic import Field

from posttrain.config.training import TrainerParams


class SftParams(TrainerParams):
    """Supervised fine-tuning on the prepared SFT data (TRL's SFTTrainer)."""
    router_aux_loss_coef: float | None = Field(None, ge=0.0, description=(
        "MoE only: the load-balancing loss keeps experts in use; null uses the model's own value."))
    assistant_only_loss: bool = Field(True, description=(
        "Loss on assistant tokens only (needs a template with `{% generation %}` markers): the model learns to "
        "answer, not to imitate prompts."))
    packing: bool = Field(True, description=(
        "Packing (best-fit decreasing, padding-free): no compute spent on padding."))
