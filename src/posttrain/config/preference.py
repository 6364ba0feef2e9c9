"""`preference:` preference optimisation stages (DPO, KTO, ORPO, SimPO): a model trained straight
on the preference pairs, with no reward model and no sampling."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from posttrain.config.base import Section
from posttrain.config.training import LoraParams, TrainerParams

# Model names of the DAG a preference stage may not take (rl.py's reserved names and the stages'
# own folders under results/).
RESERVED = ("base", "sft", "zero", "rl_zero", "student_sft", "distilled")


class PreferenceStageParams(Section):
    """One preference optimisation stage: which loss, from which model, on which pairs."""
    name: str = Field(description=(
        "The stage's name: its DAG stage is `preference_<name>`, its output `results/preference/<name>/` and its "
        "report row `<name>`. An identifier, unlike any RL stage's."))
    algorithm: Literal["dpo", "kto", "orpo", "simpo"] = Field("dpo", description=(
        "dpo: TRL's DPOTrainer (the log-ratio to a reference model, Rafailov et al. 2023); kto: TRL's KTOTrainer on "
        "the pairs unpaired (chosen: desirable, rejected: undesirable; Ethayarajh et al. 2024); orpo: TRL's "
        "ORPOTrainer (the SFT loss plus an odds-ratio term, no reference; Hong et al. 2024); simpo: TRL's CPOTrainer "
        "with the SimPO loss (the length-normalised log-probability with a target margin, no reference; Meng et al. "
        "2024). dpo and kto use the adapter-off model as their reference: one copy of the weights."))
    init: str = Field("sft", description=(
        "The model the stage starts from: `sft`, `base` (ORPO is designed to start from the base), or an RL stage's "
        "name."))
    subsets: list[str] = Field(min_length=1, description=(
        "Preference rows (results/data/preference) whose subset is one of these."))
    beta: float = Field(0.1, gt=0, description=(
        "dpo and kto: the strength of the pull towards the reference (0.1 is the papers' usual value); orpo: the "
        "weight of the odds-ratio term (lambda, 0.1); simpo: the reward scale (2.0 to 2.5 in the paper)."))
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field("sigmoid", description=(
        "dpo only: sigmoid is DPO, ipo is IPO (Azar et al. 2023), hinge the SLiC loss, robust the noise-robust DPO "
        "(with label_smoothing)."))
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description=(
        "dpo (sigmoid, robust): the assumed share of flipped labels (conservative DPO)."))
    simpo_gamma: float = Field(0.5, ge=0.0, description=(
        "simpo only: the target reward margin gamma (the paper's gamma / beta of 0.5 with beta 2.0 is gamma 1.0)."))
    desirable_weight: float = Field(1.0, gt=0, description=(
        "kto only: the weight of the desirable (chosen) examples' losses."))
    undesirable_weight: float = Field(1.0, gt=0, description=(
        "kto only: the weight of the undesirable (rejected) examples' losses."))
    max_steps: int | None = Field(None, ge=1, description="Optimisation steps; null: preference.max_steps.")
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate; null: preference.learning_rate.")
    lora: dict[str, Any] | None = Field(None, description=(
        "This stage's adapter settings over preference.lora's, key by key; null: preference.lora as it is."))
    seed: int | None = Field(None, description="Seeds this stage's training; unset: preference.seed.")

    @field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not name.isidentifier():
            raise ValueError(f"stage names must be identifiers (they name DAG stages and folders): {name!r}")
        if name in RESERVED:
            raise ValueError(f"{name!r} names another model of the DAG; choose another name")
        return name

    @model_validator(mode="after")
    def _options_of_its_algorithm(self) -> PreferenceStageParams:
        if self.loss_type != "sigmoid" and self.algorithm != "dpo":
            raise ValueError(f"preference stage {self.name!r}: loss_type {self.loss_type!r} is a DPO loss; "
                             f"{self.algorithm} has its own")
        return self


class PreferenceParams(TrainerParams):
    """Settings every preference stage shares (adapters, batch, schedule, precision, devices);
    the stages say which loss each trains with."""
    stages: list[PreferenceStageParams] = Field(default_factory=list, description=(
        "The preference stages; each is a DAG stage `preference_<name>` evaluated and reported beside the RL "
        "stages. Empty: none."))
    batch_size: int = Field(8, ge=1, description=(
        "Pairs per device per step (kto: unpaired examples, two per pair)."))
    learning_rate: float = Field(5e-5, gt=0, description=(
        "Peak learning rate (DPO with LoRA: 5e-6 to 5e-5 is the usual range on large models)."))
    max_steps: int = Field(40, ge=1, description="Optimisation steps of a stage that sets none.")
    max_length: int = Field(512, ge=16, description=(
        "The most tokens of prompt and response; longer pairs are counted and left out, never truncated."))

    def lora_for(self, st: PreferenceStageParams) -> LoraParams:
        """The adapter a stage trains: preference.lora with the stage's own `lora` keys over it."""
        return self.lora_with(st.lora, f"preference stage {st.name!r}")

    @model_validator(mode="after")
    def _stages(self) -> PreferenceParams:
        seen: set[str] = set()
        for st in self.stages:
            if st.name in seen:
                raise ValueError(f"two preference stages are named {st.name!r}")
            seen.add(st.name)
            st.seed = self.seed if st.seed is None else st.seed
            st.max_steps = st.max_steps or self.max_steps
            st.learning_rate = st.learning_rate or self.learning_rate
            self.lora_for(st)
        if self.method == "qlora":
            raise ValueError("preference.method qlora: use lora or full (a 4-bit base is a CUDA-only path not wired "
                             "for the preference trainers)")
        return self
