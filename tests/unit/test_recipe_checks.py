"""Recipes are checked when the stage table is built (`snakemake -n`, `dvc repro`, `posttrain dag`):
a stage that would receive no rows, vLLM that the environment does not install, hub inputs that
are not pinned. Every shipped recipe passes; each broken one fails naming what to fix."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from posttrain import dag
from posttrain.config import load_params
from posttrain.dag import checks

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
PRODUCTION = ROOT / "recipes" / "qwen3-30b-a3b.yaml"


def _table(*overlays):
    files = [str(ROOT / "params.yaml"), *map(str, overlays)]
    return dag.stages(load_params(files), files)


def _overlay(tmp_path, data: dict, name="broken.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_builds_its_dag(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)
    names = {s.name for s in _table(recipe)}
    if recipe == PRODUCTION:     # the whole workflow: helpfulness -> safety -> reasoning, and the RL-first path
        assert {"rl_helpfulness", "rl_safety", "rl_reasoning", "rl_zero", "distill", "export_gptq"} <= names


def test_a_stage_whose_subsets_no_source_provides_fails_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    stages = load_params([ROOT / "params.yaml", PRODUCTION]).model_dump(mode="json")["rl"]["stages"]
    stages[1]["subsets"] = ["toxic"]
    with pytest.raises(checks.RecipeError, match=r"rl stage 'safety' reads prompts of subsets \['toxic'\], but "
                                                 r"data.sources.prompts provides only .*rl.stages\[1\].subsets"):
        _table(PRODUCTION, _overlay(tmp_path, {"rl": {"stages": stages}}))


def test_vllm_without_vllm_in_the_environment_fails(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert not checks._vllm_problems(load_params([ROOT / "params.yaml", PRODUCTION]), ROOT)   # the real files pin it
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "gpu.txt").write_text("bitsandbytes==0.50.2\n# vllm==0.30.0 is commented out\n")
    monkeypatch.setattr(checks, "TRAINING_ENV_FILES", (str(tmp_path / "envs" / "gpu.txt"),))
    with pytest.raises(checks.RecipeError, match=r"rl.use_vllm is true for the GRPO stage\(s\) \['reasoning'\].*"
                                                 r"pin vllm in envs/gpu.txt"):
        _table(PRODUCTION)


def test_unpinned_hub_inputs_fail_unless_the_recipe_is_a_draft(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(ROOT)
    main = _overlay(tmp_path, {"model": {"revision": "main"}})
    with pytest.raises(checks.RecipeError, match="model.base Qwen/Qwen3-30B-A3B-Base \\(revision main\\) is not "
                                                 "pinned to a commit"):
        _table(PRODUCTION, main)
    with caplog.at_level(logging.WARNING, logger="posttrain"):
        _table(PRODUCTION, main, _overlay(tmp_path, {"draft": True}, "draft.yaml"))
    assert "draft recipe: model.base Qwen/Qwen3-30B-A3B-Base (revision main) is not pinned to a commit" in caplog.text


def test_snakemake_dry_run_stops_on_a_broken_recipe_naming_the_stage(tmp_path):
    stages = load_params([ROOT / "params.yaml", PRODUCTION]).model_dump(mode="json")["rl"]["stages"]
    stages[0]["subsets"] = ["chitchat"]
    broken = _overlay(tmp_path, {"rl": {"stages": stages}})
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(PRODUCTION), str(broken)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "rl stage 'helpfulness' reads prompts of subsets ['chitchat']" in res.stdout + res.stderr


def test_a_vllm_engine_that_does_not_divide_the_gpus_fails(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(checks.RecipeError, match="rl.vllm_tensor_parallel_size 3 does not divide rl.gpus 8"):
        _table(PRODUCTION, _overlay(tmp_path, {"rl": {"vllm_tensor_parallel_size": 3}}))


def test_a_local_folder_shaped_like_a_hub_id_needs_no_pin(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    local = load_params([ROOT / "params.yaml", PRODUCTION, _overlay(tmp_path, {"model": {"base": "tests/data"}})])
    hub = load_params([ROOT / "params.yaml", PRODUCTION, _overlay(tmp_path, {"model": {"revision": "v1"}}, "t.yaml")])
    assert not any(item.startswith("model.base") for item in checks._unpinned(local))
    assert any(item.startswith("model.base Qwen/Qwen3-30B-A3B-Base (revision v1)") for item in checks._unpinned(hub))


def test_a_shared_critic_on_a_model_the_reward_models_were_not_trained_from_is_refused(tmp_path, monkeypatch):
    """The production recipe's safety stage once asked for its critic on the helpfulness policy's
    weights, though the safety reward model's LoRA was trained on the SFT model: the rehearsal
    failed at rl_safety; the DAG now refuses it before any job starts."""
    monkeypatch.chdir(ROOT)
    recipe = load_params([ROOT / "params.yaml", PRODUCTION])
    stages = [st.model_dump(mode="json", exclude_none=True) for st in recipe.rl.stages]
    stages[1]["ppo"]["critic_base"] = "shared"
    broken = _overlay(tmp_path, {"rl": {"stages": stages}})
    with pytest.raises(checks.RecipeError, match=r"rl stage 'safety': ppo.critic_base: shared puts the critic's "
                       r"LoRA on the stage's init model \(rl stage 'helpfulness'\).*reward.init \(sft\)"):
        _table(PRODUCTION, broken)
    stages[1]["init"] = "sft"            # from the SFT model, the reward model's LoRA fits
    _table(PRODUCTION, _overlay(tmp_path, {"rl": {"stages": stages}}, "fixed.yaml"))
