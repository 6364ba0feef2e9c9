"""The accelerate configs the DAG launches multi-GPU stages with, read by accelerate itself, against
the training arguments our stages build under them: a clash transformers refuses at start-up must
fail here, on a CPU, not after hours in a cluster queue."""

from __future__ import annotations

import pytest

from conftest import ROOT
from posttrain.config import load_params
from posttrain.training import trainers

RECIPE = ROOT / "recipes" / "qwen3-30b-a3b.yaml"


def _launcher_env(config: str, monkeypatch) -> dict[str, str]:
    """The environment `accelerate launch --config_file CONFIG` gives each process, set in this one."""
    from posttrain.rehearsal.launch import launcher_environment

    with launcher_environment(ROOT / config) as env:
        pass
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.mark.parametrize("section", ["sft", "reward", "rl", "distill"])
def test_fsdp_and_the_recipes_gradient_checkpointing_do_not_clash(section, monkeypatch, tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import TrainingArguments

    cfg = getattr(load_params([ROOT / "params.yaml", RECIPE]), section)
    assert cfg.strategy == "fsdp" and cfg.gradient_checkpointing     # what the production recipe asks for
    env = _launcher_env("configs/accelerate/fsdp.yaml", monkeypatch)
    plugin = FullyShardedDataParallelPlugin()                         # built from the launcher's environment
    assert env["ACCELERATE_USE_FSDP"] == "true" and plugin.activation_checkpointing
    args = TrainingArguments(**trainers.training_kwargs(cfg, {"bf16": False, "fp16": False}, tmp_path))
    # transformers' Trainer raises when both are true ("can't both be set to True")
    assert not (plugin.activation_checkpointing and args.activation_checkpointing)


def test_gradient_checkpointing_is_the_trainers_own_without_fsdp(monkeypatch, tmp_path):
    for key in ("ACCELERATE_USE_FSDP", "FSDP_ACTIVATION_CHECKPOINTING"):
        monkeypatch.delenv(key, raising=False)
    cfg = load_params([ROOT / "params.yaml", RECIPE]).sft
    assert trainers.training_kwargs(cfg, {"bf16": False, "fp16": False}, tmp_path)["activation_checkpointing"]
    _launcher_env("configs/accelerate/ddp.yaml", monkeypatch)
    assert trainers.training_kwargs(cfg, {"bf16": False, "fp16": False}, tmp_path)["activation_checkpointing"]
