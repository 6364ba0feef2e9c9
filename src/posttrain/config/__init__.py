"""params.yaml: one section per stage, validated at load.

A parameter file is the default `params.yaml` (the embedded CPU demo) plus zero or more overlays
(recipes such as `recipes/qwen3-30b-a3b.yaml`) deep-merged on top, the same way Snakemake merges
`--configfile` files. Validation is strict: an unknown key or a wrong type fails at load with the
key's dotted path, the file that set it and what is allowed, before any job starts.

One schema module per section (`model`, `demo_data`, `data`, `sft`, `reward`, `rl`, `preference`, `distill`,
`export`, `evaluate`, `resources`; `training` holds what the training sections share), `params`
for the whole file, `loader` for reading it and `docs` for the key reference (docs/params.md).
Every key is documented by its `Field(description=...)`.
"""

from posttrain.config.base import ConfigError, Section
from posttrain.config.data import DATA_KINDS, CleaningParams, DataParams, SourceParams, SourcesParams
from posttrain.config.demo_data import DemoDataParams
from posttrain.config.distill import DistillParams, SamplingParams, StudentParams
from posttrain.config.evaluate import EvaluateParams
from posttrain.config.export import (
    AwqParams,
    CalibratedQuantParams,
    ExportParams,
    GgufLoraParams,
    GgufParams,
    GptqParams,
)
from posttrain.config.loader import DEFAULT_PARAMS, deep_merge, load_params, read_yaml, section, validate
from posttrain.config.model import ModelParams
from posttrain.config.params import Params
from posttrain.config.preference import PreferenceParams, PreferenceStageParams
from posttrain.config.resources import JobResources, ResourcesParams
from posttrain.config.reward import AspectParams, RewardParams
from posttrain.config.rl import PpoParams, RewardSpec, RlParams, RlStageParams
from posttrain.config.sft import SftParams
from posttrain.config.training import LoraParams, TrainerParams, TrainingParams

__all__ = [
    "DATA_KINDS", "DEFAULT_PARAMS", "AspectParams", "AwqParams", "CalibratedQuantParams", "CleaningParams",
    "ConfigError", "DataParams", "DemoDataParams", "DistillParams", "EvaluateParams", "ExportParams",
    "GgufLoraParams", "GgufParams", "GptqParams", "JobResources", "LoraParams", "ModelParams", "Params",
    "PpoParams", "PreferenceParams", "PreferenceStageParams", "ResourcesParams", "RewardParams", "RewardSpec",
    "RlParams", "RlStageParams", "SamplingParams",
    "Section", "SftParams", "SourceParams", "SourcesParams", "StudentParams", "TrainerParams", "TrainingParams",
    "deep_merge", "load_params", "read_yaml", "section", "validate",
]
