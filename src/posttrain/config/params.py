"""The whole parameter file: one section per stage (and the cluster resources)."""

from __future__ import annotations

from pydantic import Field

from posttrain.config.base import Section
from posttrain.config.data import DataParams
from posttrain.config.demo_data import DemoDataParams
from posttrain.config.distill import DistillParams
from posttrain.config.evaluate import EvaluateParams
from posttrain.config.export import ExportParams
from posttrain.config.model import ModelParams
from posttrain.config.preference import PreferenceParams
from posttrain.config.resources import ResourcesParams
from posttrain.config.reward import RewardParams
from posttrain.config.rl import RlParams
from posttrain.config.sft import SftParams
from posttrain.config.tracking import TrackingParams


class Params(Section):
    """params.yaml: the embedded CPU demo by default; recipes are overlays on it."""
    model: ModelParams = Field(default_factory=ModelParams, description="The base model to post-train.")
    demo_data: DemoDataParams = Field(default_factory=DemoDataParams, description=(
        "The generated demo corpus (the embedded CPU demo's data)."))
    data: DataParams = Field(default_factory=DataParams, description=(
        "Data sources per kind, cleaning and the train/val split."))
    sft: SftParams = Field(default_factory=SftParams, description="Supervised fine-tuning.")
    reward: RewardParams = Field(default_factory=RewardParams, description="Reward models, one per aspect.")
    rl: RlParams = Field(default_factory=RlParams, description=(
        "Reinforcement-learning stages and the settings they share."))
    preference: PreferenceParams = Field(default_factory=PreferenceParams, description=(
        "Preference optimisation stages (DPO, KTO, ORPO, SimPO) trained on the preference pairs."))
    distill: DistillParams | None = Field(None, description=(
        "Distillation into a smaller student. null: no distillation stages in the DAG."))
    export: ExportParams | None = Field(None, description=(
        "Merged and quantized serving artifacts. null: no export stages in the DAG."))
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams, description="Evaluation of every model.")
    tracking: TrackingParams = Field(default_factory=TrackingParams, description=(
        "An experiment tracker the stages also report to (MLflow, TensorBoard); changing it reruns nothing."))
    resources: ResourcesParams = Field(default_factory=ResourcesParams, description=(
        "What each rule asks a cluster scheduler for (`snakemake --profile slurm`)."))
    draft: bool = Field(False, description=(
        "A recipe being tried out: hub models and datasets not pinned to a commit are a warning. false: building "
        "the DAG fails on them, since a rerun next month would train on other weights or data."))
