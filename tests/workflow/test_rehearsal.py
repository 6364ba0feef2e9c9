"""`posttrain rehearse`: every recipe's whole DAG on the CPU, with stand-ins, and its pre-flight
report. The production recipe is rehearsed under `--profile slurm` (tests/workflow/test_slurm.py);
the others locally here, and a recipe broken on purpose fails naming the stage."""

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, bin_path, run

RECIPES = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
PRODUCTION = "qwen3-30b-a3b.yaml"


def rehearse(recipe: str, out: Path, *args: str, check: bool = True):
    return run([bin_path("posttrain"), "rehearse", recipe, "--out", str(out), *args], ROOT, check=check)


def assert_every_stage_ran(out: Path, *recipes: str) -> str:
    """The report says every rule of the recipes' table ran, and each multi-GPU rule ran sharded
    across two processes; returns the report."""
    from posttrain import dag
    from posttrain.config import load_params

    files = ["params.yaml", *(f"recipes/{r}" for r in recipes)]
    table = dag.stages(load_params([ROOT / f for f in files]), files)
    report = (out / "preflight.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\w+) \| (yes|\*\*no\*\*) \|", report, re.M)}
    assert set(rows) == {s.name for s in table} and set(rows.values()) == {"yes"}, rows
    for s in table:
        launch = json.loads((out / "work" / s.outs[0] / "manifest.json").read_text())["launch"]
        if s.launcher:                 # two ranks in one process group; the launcher's config recorded
            assert launch["world_size"] == 2 and launch["backend"] == "gloo", (s.name, launch)
            assert launch["launcher"] == ("fsdp" if "fsdp.yaml" in s.launcher else None), (s.name, launch)
        else:
            assert launch["world_size"] == 1, (s.name, launch)
    assert (out / "preflight.html").read_text().count("<table>") == 3
    return report


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != PRODUCTION])
def test_each_demo_recipe_rehearses(recipe, tmp_path):
    res = rehearse(f"recipes/{recipe}", tmp_path)
    assert "every stage ran" in res.stdout
    report = assert_every_stage_ran(tmp_path, recipe)
    assert "| model.base | embedded:smollm2-135m-instruct | tiny:llama |" in report
    # the rehearsal works in its own tree: the project's results are not touched
    overlay = yaml.safe_load((tmp_path / "work/rehearsal.yaml").read_text())
    assert overlay["model"]["base"] == "tiny:llama" and (tmp_path / "work/results/report").is_dir()


def test_a_stage_that_receives_no_rows_fails_the_rehearsal_naming_it(tmp_path):
    broken = tmp_path / "broken.yaml"       # a recipe kept outside the project is rehearsed too
    broken.write_text("reward: {aspects: {helpful: {subsets: [helpfull]}, safety: {subsets: [safety]}}}\n")
    res = rehearse(str(broken), tmp_path / "out", check=False)
    tmp_path = tmp_path / "out"
    assert res.returncode == 1
    assert "Error in rule reward_helpful:" in res.stderr and "subset in ['helpfull']" in res.stderr, res.stderr
    report = (tmp_path / "preflight.md").read_text()
    assert "**FAILED" in report and re.search(r"^\| reward_helpful \| \*\*no\*\* \|", report, re.M)


def test_stand_ins_of_the_production_recipe():
    """What the rehearsal swaps in, read from the overlay it builds (no run): the MoE's tiny twin
    with Qwen3's template, fixtures for all four hub datasets, two processes, transformers for vLLM,
    and a student of the student's family."""
    from posttrain.config import load_params
    from posttrain.rehearsal import standins

    params = load_params([ROOT / "params.yaml", ROOT / "recipes" / PRODUCTION])
    overlay, found = standins.overlay(params, ROOT)
    assert overlay["model"]["base"] == "tiny:qwen3_moe" and params.model.chat_template == "qwen3"
    assert overlay["distill"]["student"]["model"] == "tiny:qwen3"
    hub = [s["path"] for kind in overlay["data"]["sources"].values() for s in kind]
    assert all(p.startswith(f"hf:{ROOT / 'tests/data/hub'}") and "revision" not in p for p in hub)
    assert f"hf:{ROOT}/tests/data/hub/Anthropic/hh-rlhf?data_dir=harmless-base&split=test" in hub
    keys = {s.key for s in found}
    assert {"model.base", "rl.use_vllm", "sft.gpus", "rl.gpus", "distill.student.model"} <= keys
    assert overlay["rl"]["use_vllm"] is False and overlay["sft"]["gpus"] == 2
    # each RL stage keeps its algorithm and rewards, only smaller; PPO's mini-batches fit its rollouts
    by_name = {st["name"]: st for st in overlay["rl"]["stages"]}
    assert by_name["safety"]["algorithm"] == "ppo" and by_name["safety"]["ppo"]["mini_batches"] <= 2
    assert by_name["safety"]["rewards"] == [r.model_dump(mode="json") for r in params.rl.stages[1].rewards]
    assert overlay["rl"]["zero"]["algorithm"] == "ppo"


def test_a_hub_dataset_without_a_fixture_is_named(tmp_path):
    from posttrain.rehearsal import standins

    with pytest.raises(FileNotFoundError, match=r"no local fixture for hub dataset 'someone/data'.*tests/data/hub"):
        standins.hub_fixture("hf:someone/data?split=train", ROOT)
    with pytest.raises(ValueError, match="no tiny stand-in is known for model 'org/mystery'.*--model tiny:ARCH"):
        standins.tiny_arch("org/mystery")


def test_the_fixtures_have_the_real_schemas():
    """Each fixture loads through `datasets` as the hub id would, with the real columns."""
    from posttrain.data.formats import read_records

    hub = ROOT / "tests/data/hub"
    expect = {
        "openai/gsm8k?name=main&split=train": {"question", "answer"},
        "openai/gsm8k?name=main&split=test": {"question", "answer"},
        "Anthropic/hh-rlhf?split=train": {"chosen", "rejected"},
        "Anthropic/hh-rlhf?data_dir=harmless-base&split=test": {"chosen", "rejected"},
        "HuggingFaceH4/ultrachat_200k?split=train_sft": {"prompt", "prompt_id", "messages"},
        "HuggingFaceH4/ultrafeedback_binarized?split=train_prefs": {"prompt", "prompt_id", "chosen", "rejected",
                                                                     "messages", "score_chosen", "score_rejected"},
        "HuggingFaceH4/ultrafeedback_binarized?split=train_gen": {"prompt", "prompt_id", "chosen", "rejected",
                                                                   "messages", "score_chosen", "score_rejected"},
    }
    for spec, columns in expect.items():
        records = list(read_records(f"hf:{hub}/{spec}"))
        assert len(records) >= 20, spec
        assert set(records[0].data) == columns, (spec, set(records[0].data))
        assert json.loads((hub / spec.split("?")[0] / "rows.json").read_text())[
            "&".join(sorted(spec.split("?")[1].split("&")))] > len(records)


def test_a_package_a_stage_needs_that_does_not_import_fails_before_anything_runs(tmp_path, monkeypatch, capsys):
    from posttrain.rehearsal import preflight, run

    monkeypatch.setitem(preflight.NEEDS, "reward", [*preflight.NEEDS["reward"], "no_such_package_here"])
    code = run.rehearse(ROOT / "recipes/demo-quick.yaml", tmp_path, ROOT, [])
    assert code == 1
    err = capsys.readouterr().err
    assert "reward_helpful: no_such_package_here (the pipeline's environment)" in err
    assert not (tmp_path / "work/results").exists()          # nothing ran
    report = (tmp_path / "preflight.md").read_text()
    assert re.search(r"^\| reward_safety \| the pipeline's environment \| .*trl.* \|  \| no_such_package_here \|",
                     report, re.M)


def test_a_launcher_config_clash_fails_the_rehearsal_naming_each_rule(monkeypatch):
    """FSDP's own activation checkpointing and the trainer's, both on (problem 1 of the production
    recipe): a CPU cannot run FSDP, so the rehearsal checks each config's plugin in-process. With
    the stages' old training arguments the check names every FSDP rule; with today's, none."""
    from posttrain.config import load_params
    from posttrain.rehearsal import launch
    from posttrain.training import trainers

    params = load_params([ROOT / "params.yaml", ROOT / "recipes" / PRODUCTION])
    assert launch.problems(params, ROOT) == []
    monkeypatch.setattr(trainers, "activation_checkpointing", lambda cfg: bool(cfg.gradient_checkpointing))
    found = launch.problems(params, ROOT)
    assert {p.split(":")[0] for p in found} == {"sft", "reward_helpful", "reward_safety", "reward_helpful_audit",
                                                 "rl_reasoning",
                                                 "distill_baseline", "distill"}, found
    assert all("transformers' Trainer refuses both at start-up" in p for p in found)


def test_the_gpu_script_builds_its_stages_from_the_rehearsal(tmp_path):
    """tests/gpu/rehearse_on_gpu.py runs only on a GPU machine; its plan is checked here so that it
    does not rot: the training stages and what they read, one process each, the recipe's bf16."""
    res = run([bin_path("python"), "tests/gpu/rehearse_on_gpu.py", str(tmp_path), "--print"], ROOT)
    rules = dict(line.split(": ", 1) for line in res.stdout.splitlines())
    assert list(rules) == ["base_model", "prepare_data_eval", "prepare_data_sft", "prepare_data_preference",
                           "prepare_data_prompts", "sft", "reward_helpful", "reward_safety", "rl_helpfulness",
                           "rl_safety", "rl_reasoning"]
    assert all("--params rehearsal.yaml" in cmd and "accelerate launch" not in cmd for cmd in rules.values())
    overlay = yaml.safe_load((tmp_path / "work/rehearsal.yaml").read_text())
    assert overlay["sft"]["gpus"] == 1 and "precision" not in overlay["sft"] and "dtype" not in overlay["model"]
