"""Preference optimisation stages (DPO, KTO, ORPO, SimPO) on the tiny model: each learns the
pairs' preference (loss falls, the held-out log-probability margin grows), DPO's and KTO's
reference is the adapter-off policy (no second copy), a resumed run equals an uninterrupted one,
and the DAG gives each stage its evaluation and report row."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import ROOT, TINY_OVERLAY, write_overlay
from posttrain.config import ConfigError, load_params
from posttrain.stages import preference
from posttrain.training import preference as training_preference
from posttrain.training import trainers


def _params(tmp_path, *stages, **shared):
    cfg = {"max_steps": 12, "eval_steps": 6, "save_steps": 6, "batch_size": 8, "learning_rate": 0.005,
           "logging_steps": 1, "max_length": 96, "checkpoint_dir": str(tmp_path / "ckpt"),
           "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "stages": list(stages), **shared}
    return load_params([ROOT / "params.yaml", TINY_OVERLAY, write_overlay(tmp_path, "po", {"preference": cfg})])


@pytest.mark.parametrize("algorithm,beta", [("dpo", 0.1), ("kto", 0.1), ("orpo", 1.0), ("simpo", 2.0)])
def test_each_algorithm_learns_the_preference(tmp_path, tiny_base, preference_data, algorithm, beta):
    params = _params(tmp_path, {"name": "po", "algorithm": algorithm, "init": "base", "subsets": ["helpful"],
                                "beta": beta})
    out = tmp_path / "out"
    manifest = preference.main(params, "po", tiny_base, preference_data, out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["algorithm"] == algorithm and m["steps"] == 12 and m["pairs_over_length"] == 0
    assert m["heldout_logp_margin"] > m["heldout_logp_margin_start"] + 1.0
    assert m["heldout_margin_gain"] == pytest.approx(m["heldout_logp_margin"] - m["heldout_logp_margin_start"])
    assert m["heldout_pairs_moved_to_chosen"] >= 0.8
    assert m["heldout_pair_accuracy"] >= max(0.9, m["heldout_pair_accuracy_start"])
    assert 0 < m["trainable_params"] < m["total_params"]
    run = json.loads((out / "run.json").read_text())
    assert run["peak_memory_gb"] > 0 and run["train_runtime_s"] > 0
    rows = [r for r in map(_floats, _csv(out / "log.csv")) if r.get("train_loss") is not None]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert manifest["stage"] == "preference:po" and manifest["params"]["stage"]["algorithm"] == algorithm
    for name in ("curves.png", "README.md", "adapter/adapter_config.json", "merged/config.json"):
        assert (out / name).is_file(), name
    # merged/ is the trained policy: it prefers the chosen answers as the stage measured
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    tokenizer = trainers.init_model(tiny_base, "base")[1]
    val, _, _ = training_preference.read_pairs(preference_data / "val.jsonl", ["helpful"], tokenizer, 96)
    margins = training_preference.logp_margins(merged, tokenizer, val)
    assert sum(margins) / len(margins) == pytest.approx(m["heldout_logp_margin"], rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("algorithm", ["dpo", "kto"])
def test_the_reference_is_the_adapter_off_policy(tmp_path, tiny_base, preference_data, algorithm):
    params = _params(tmp_path, {"name": "po", "algorithm": algorithm, "init": "base", "subsets": ["helpful"]})
    cfg, st = params.preference, params.preference.stages[0]
    weights, tokenizer = trainers.init_model(tiny_base, "base")
    pairs, _, _ = training_preference.read_pairs(preference_data / "train.jsonl", ["helpful"], tokenizer, 96)
    model = AutoModelForCausalLM.from_pretrained(weights)
    trainer = training_preference.build_trainer(model, tokenizer, pairs, pairs[:4], tmp_path / "run", cfg, st,
                                                trainers.resolve_precision("fp32"))
    assert trainer.ref_model is None                       # no second copy of the weights
    trainer.train()
    ids = torch.tensor([tokenizer.encode("What is 2 plus 3? 2 + 3 = 5.")])
    init_logits = AutoModelForCausalLM.from_pretrained(weights)(ids).logits
    with torch.no_grad():
        trained = trainer.model(ids).logits
        with trainer.model.disable_adapter():
            reference = trainer.model(ids).logits
    assert torch.allclose(reference, init_logits, atol=1e-5)
    assert not torch.allclose(trained, init_logits, atol=1e-3)   # the policy itself moved


def test_a_resumed_stage_equals_an_uninterrupted_one(tmp_path, tiny_base, preference_data):
    params = _params(tmp_path, {"name": "po", "algorithm": "dpo", "init": "base", "subsets": ["helpful"]})
    whole = tmp_path / "whole"
    preference.main(params, "po", tiny_base, preference_data, whole)
    run_dir = next((tmp_path / "ckpt").glob("preference-po*"))
    shutil.rmtree(run_dir / "checkpoint-12")               # as if stopped after step 6's checkpoint
    resumed = tmp_path / "resumed"
    preference.main(params, "po", tiny_base, preference_data, resumed)
    assert json.loads((resumed / "metrics.json").read_text())["resumed_from_step"] == 6
    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_over_length_pairs_are_counted_and_errors_name_what_to_fix(tmp_path, tiny_base, preference_data):
    params = _params(tmp_path, {"name": "po", "algorithm": "dpo", "init": "base", "subsets": ["helpful"]},
                     max_length=16)
    with pytest.raises(ValueError, match=r"0 training and 0 held-out pairs .* over preference.max_length 16"):
        preference.main(params, "po", tiny_base, preference_data, tmp_path / "x")
    with pytest.raises(ValueError, match="no stage 'dpo'"):
        preference.main(params, "dpo", tiny_base, preference_data, tmp_path / "x")
    for bad, message in [({"name": "sft", "subsets": ["a"]}, "names another model"),
                         ({"name": "k", "algorithm": "kto", "loss_type": "ipo", "subsets": ["a"]}, "is a DPO loss")]:
        with pytest.raises(ConfigError, match=message):
            _params(tmp_path, bad)
    assert not (tmp_path / "x").exists()


def test_the_dag_evaluates_and_reports_each_stage(tmp_path):
    from posttrain.dag import table

    overlay = write_overlay(tmp_path, "dag", {"preference": {"stages": [
        {"name": "dpo", "algorithm": "dpo", "subsets": ["helpful"]},
        {"name": "orpo_base", "algorithm": "orpo", "init": "base", "subsets": ["helpful", "safety"]}]}})
    stages = {s.name: s for s in table.stages(load_params([ROOT / "params.yaml", overlay]))}
    dpo, orpo = stages["preference_dpo"], stages["preference_orpo_base"]
    assert dpo.args[dpo.args.index("--init") + 1] == "results/sft"
    assert orpo.args[orpo.args.index("--init") + 1] == "results/base"
    assert dpo.deps == ["results/sft", "results/data/preference"] and dpo.outs == ["results/preference/dpo"]
    assert "src/posttrain/stages/preference.py" in dpo.code and "src/posttrain/stages/rl.py" not in dpo.code
    assert stages["evaluate_dpo"].args[stages["evaluate_dpo"].args.index("--model") + 1] == "results/preference/dpo"
    report = stages["report"].args
    assert "results/eval/dpo" in report and "results/eval/orpo_base" in report
    assert "dpo=sft" in report and "orpo_base=base" in report         # each against its init, paired
    assert "dpo=helpfulness" in report and "orpo_base=helpfulness" not in report   # and the RL stage from it


def test_kto_trains_on_unpaired_ratings_that_pair_stages_and_reward_models_leave_out(tmp_path, tiny_base):
    """Thumbs-up / thumbs-down rows (prompt, completion, label) pass the data stage beside pairs;
    KTO trains on them, DPO and the reward models read the pairs alone."""
    from conftest import write_jsonl
    from posttrain.stages import prepare_data, reward

    pairs = [{"prompt": f"What is {a} plus 3?", "chosen": f"{a} + 3 = {a + 3}.", "rejected": "I do not know.",
              "subset": "helpful"} for a in range(2, 22)]
    ratings = [{"prompt": f"What is {a} plus 7?", "completion": f"{a} + 7 = {a + 7}." if good else "No idea.",
                "label": good, "subset": "helpful"} for a in range(2, 22) for good in (True, False)]
    ratings.append({"prompt": "What is 1 plus 1?", "completion": "2.", "label": "maybe", "subset": "helpful"})
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY])
    params.data.cleaning.near_dup = False
    params.data.val_fraction = 0.25
    data = tmp_path / "preference"
    prepare_data.main(params, "preference", [str(write_jsonl(tmp_path / "pairs.jsonl", pairs)),
                                             str(write_jsonl(tmp_path / "ratings.jsonl", ratings))], data,
                      tokenizer_dir=tiny_base)
    rejected = [json.loads(line) for line in open(data / "rejected.jsonl")]
    assert [(r["reason"], "label must be true or false" in r["detail"]) for r in rejected] == [("wrong_type", True)]
    tokenizer = trainers.init_model(tiny_base, "base")[1]
    read = [training_preference.read_pairs(data / f"{split}.jsonl", ["helpful"], tokenizer, 96)
            for split in ("train", "val")]
    assert sum(len(p) for p, _, _ in read) == 20 and sum(len(r) for _, r, _ in read) == 40
    assert all(set(r) == {"prompt", "completion", "label"} for _, rated, _ in read for r in rated)
    rm_pairs, _ = reward._pairs(data / "train.jsonl", ["helpful"], tokenizer, params.reward)
    assert len(rm_pairs) == len(read[0][0])
    cfg = {"name": "po", "init": "base", "subsets": ["helpful"]}
    out = tmp_path / "kto"
    preference.main(_params(tmp_path, {**cfg, "algorithm": "kto"}, max_steps=6), "po", tiny_base, data, out)
    m = json.loads((out / "metrics.json").read_text())
    assert (m["unpaired_ratings"], m["unpaired_ratings_used"]) == (40, True) and m["steps"] == 6
    assert m["heldout_pairs"] == len(read[1][0])


def _csv(path):
    import csv

    with open(path) as fh:
        return list(csv.DictReader(fh))


def _floats(row):
    return {k: float(v) if v not in ("", None) else None for k, v in row.items()}
