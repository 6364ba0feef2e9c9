"""Reward-model stage: Bradley-Terry training with TRL's RewardTrainer on a tiny model, the
saved folder loads with transformers + PEFT, and the reward_model reward function scores with
the saved normalisation."""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import ROOT, TINY_OVERLAY, posttrain_in_two_processes
from posttrain.config import load_params
from posttrain.models.reward_model import RewardModel, encode, score_ids
from posttrain.stages import prepare_data, reward
from posttrain.verifiers import rewards


def _params(tmp_path, **reward_cfg):
    cfg = {"init": "base", "max_steps": 24, "eval_steps": 8, "save_steps": 8, "batch_size": 8,
           "learning_rate": 0.01, "logging_steps": 2, "stats_pairs": 32, "max_length": 96,
           "checkpoint_dir": str(tmp_path / "ckpt"),
           "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "layers": None},
           "aspects": {"helpful": {"subsets": ["helpful"]}, "safety": {"subsets": ["safety"]}}}
    cfg.update(reward_cfg)
    overlay = tmp_path / "reward.yaml"
    overlay.write_text(json.dumps({"reward": cfg}))
    return load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay])


def test_reward_model_learns_saves_and_loads(tmp_path, tiny_base, preference_data):
    out = tmp_path / "rm"
    params = _params(tmp_path)
    manifest = reward.main(params, "helpful", tiny_base, preference_data, out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["heldout_accuracy"] >= 0.9 and m["heldout_mean_margin"] > 0
    assert m["val_accuracy_first"] is not None                         # measured at step 0 too
    assert m["train_pairs"] > 50 and m["heldout_pairs"] >= 10 and m["steps"] == 24
    assert m["train_reward_std"] > 0 and m["train_stats_pairs"] == 32
    assert 0 < m["trainable_params"] < m["total_params"]
    assert manifest["stage"] == "reward:helpful" and manifest["params"]["aspect"] == "helpful"
    for name in ("log.csv", "curves.png", "README.md", "adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]

    # The folder loads with plain transformers + PEFT and gives the stage's scores.
    tok = AutoTokenizer.from_pretrained(out / "adapter")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    model = PeftModel.from_pretrained(model, out / "adapter")
    prompt = [{"role": "user", "content": "What is 40 plus 3?"}]
    good, bad = encode(tok, prompt, "40 + 3 = 43. #### 43"), encode(tok, prompt, "I do not know, sorry.")
    raw = score_ids(model, tok.pad_token_id, [good, bad])
    assert raw[0] > raw[1]
    # Batched scoring with padding equals one-at-a-time scoring.
    single = [score_ids(model, tok.pad_token_id, [s])[0] for s in (good, bad)]
    assert raw == pytest.approx(single, abs=1e-4)

    # RewardModel normalises with the saved statistics; the registry function wraps it.
    rm = RewardModel.load(out)
    assert rm.raw([prompt, prompt], ["40 + 3 = 43. #### 43", "I do not know, sorry."]) == pytest.approx(raw, abs=1e-4)
    fn = rewards.build({"name": "reward_model", "path": str(out)})
    scored = fn([prompt, prompt], [[{"role": "assistant", "content": "40 + 3 = 43. #### 43"}],
                                   "I do not know, sorry."])
    assert scored == pytest.approx([(r - m["train_reward_mean"]) / m["train_reward_std"] for r in raw], abs=1e-3)
    assert fn.__name__ == "rm_rm"
    # An RL stage that samples in bfloat16 scores in it too: the same order, close scores.
    from posttrain.config import RewardSpec
    from posttrain.rl.reward_terms import reward_spec

    spec = reward_spec(RewardSpec(name="reward_model", aspect="helpful"), {"helpful": out}, "bfloat16")
    assert spec["dtype"] == "bfloat16"
    in_bf16 = rewards.build(spec)([prompt, prompt], ["40 + 3 = 43. #### 43", "I do not know, sorry."])
    assert in_bf16 != scored and in_bf16 == pytest.approx(scored, abs=0.1) and in_bf16[0] > in_bf16[1]
    # device: auto places the layers with accelerate's device map (here: all on the CPU)
    spread = RewardModel.load(out, device="auto")
    assert spread.raw([prompt, prompt], ["40 + 3 = 43. #### 43", "I do not know, sorry."]) == \
        pytest.approx(raw, abs=1e-4)


def test_reward_pairwise_loss_moves_margins_not_just_chosen(tmp_path, tiny_base, preference_data):
    """Bradley-Terry: what is learned is the difference; the centring term keeps the mean near 0."""
    out = tmp_path / "rm"
    reward.main(_params(tmp_path, max_steps=16, center_rewards_coefficient=0.1), "helpful", tiny_base,
                preference_data, out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["heldout_mean_margin"] > 0.5
    assert abs(m["train_reward_mean"]) < m["heldout_mean_margin"]


def test_over_length_pairs_are_counted_not_truncated(tmp_path, tiny_base, preference_data):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    lengths = sorted(max(len(encode(tok, r["prompt"], r["chosen"])), len(encode(tok, r["prompt"], r["rejected"])))
                     for f in ("train.jsonl", "val.jsonl") for r in map(json.loads, open(preference_data / f)))
    limit = lengths[len(lengths) // 2]
    out = tmp_path / "rm"
    reward.main(_params(tmp_path, max_length=limit, max_steps=2, eval_steps=2, save_steps=2), "helpful", tiny_base,
                preference_data, out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["pairs_over_length"] == sum(n > limit for n in lengths) > 0
    total = sum(1 for f in ("train.jsonl", "val.jsonl") for _ in open(preference_data / f))
    assert m["train_pairs"] + m["heldout_pairs"] + m["pairs_over_length"] == total


def test_context_turns_keeps_the_system_message_and_the_last_turns(tiny_base):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    history = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "First question"},
               {"role": "assistant", "content": "First answer"}, {"role": "user", "content": "Second question"}]
    text = tok.decode(encode(tok, history, "Second answer", context_turns=1))
    assert "Be kind." in text and "Second question" in text and "Second answer" in text
    assert "First question" not in text and "First answer" not in text
    no_system = tok.decode(encode(tok, history[1:], "Second answer", context_turns=2))
    assert "First answer" in no_system and "First question" not in no_system
    assert encode(tok, history, "x", context_turns=None) == encode(tok, history, "x", context_turns=9)


def test_reward_errors_name_what_to_fix(tmp_path, tiny_base, preference_data):
    params = _params(tmp_path)
    with pytest.raises(ValueError, match="no aspect 'helpfull'.*'helpful', 'helpful_audit', 'safety'"):
        reward.main(params, "helpfull", tiny_base, preference_data, tmp_path / "x")
    with pytest.raises(ValueError, match=r"0 training and 0 held-out pairs.*subsets present: \['helpful'\]"):
        reward.main(params, "safety", tiny_base, preference_data, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_aspect_names_are_validated(tmp_path):
    from posttrain.config import ConfigError

    with pytest.raises(ConfigError, match="identifiers"):
        _params(tmp_path, aspects={"not ok": {"subsets": ["a"]}})
    with pytest.raises(ConfigError, match="subsets"):
        _params(tmp_path, aspects={"ok": {"subsets": []}})


def test_rerun_resumes_from_the_latest_complete_checkpoint(tmp_path, tiny_base, preference_data):
    """Losing the newest checkpoint (a kill before step 16 was saved) costs only the steps since
    the previous one: the rerun resumes at step 8 and ends with the same scores."""
    import shutil

    params = _params(tmp_path, max_steps=16, save_total_limit=2)
    reward.main(params, "helpful", tiny_base, preference_data, tmp_path / "full")
    run_dir = next((tmp_path / "ckpt").glob("reward-helpful-*"))
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-8"]
    shutil.rmtree(run_dir / "checkpoint-16")
    reward.main(params, "helpful", tiny_base, preference_data, tmp_path / "resumed")
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "resumed"))
    assert a["resumed_from_step"] is None and b["resumed_from_step"] == 8 and b["steps"] == 16
    assert b["heldout_mean_margin"] == pytest.approx(a["heldout_mean_margin"], rel=1e-3)
    assert b["train_reward_mean"] == pytest.approx(a["train_reward_mean"], rel=1e-3, abs=1e-4)
    # A rerun of the finished run restores its final checkpoint: no step past max_steps.
    reward.main(params, "helpful", tiny_base, preference_data, tmp_path / "again")
    c = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert c["resumed_from_step"] == 16 and c["steps"] == 16
    assert c["heldout_mean_margin"] == pytest.approx(b["heldout_mean_margin"], rel=1e-6)


def test_pairs_of_similar_length_share_a_batch(tmp_path, tiny_base):
    """reward.group_by_length: a batch pads to its longest sequence, so grouping pairs by length
    cuts the padded tokens of an epoch; every pair is still trained on exactly once."""
    import random

    from posttrain.training import trainers as training

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    rng = random.Random(0)
    pairs = [{"chosen_ids": [5 + i % 7] * n, "rejected_ids": [9] * max(1, n - rng.randint(0, 5))}
             for i, n in enumerate(rng.randint(4, 120) for _ in range(64))]
    padded, seen = {}, {}
    for grouped in (True, False):
        cfg = _params(tmp_path, group_by_length=grouped, batch_size=4, max_length=128).reward
        model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = reward._build_trainer(model, tokenizer, pairs, pairs[:4], tmp_path / f"run{grouped}", cfg,
                                        training.resolve_precision("auto"))
        batches = list(trainer.get_train_dataloader())
        padded[grouped] = sum(b["input_ids"].numel() for b in batches)
        seen[grouped] = sorted(int(n) for b in batches
                               for n in b["attention_mask"][: len(b["attention_mask"]) // 2].sum(1))
    assert seen[True] == seen[False] == sorted(len(p["chosen_ids"]) for p in pairs)
    assert padded[True] < 0.8 * padded[False]


HH_SAMPLE = ROOT / "tests" / "data" / "hh_rlhf_harmless_test_sample.jsonl.gz"


def test_real_hh_rlhf_pairs_are_ingested_as_preference_pairs(tmp_path, tiny_base):
    """Real Anthropic HH-RLHF transcripts go through the data stage: format detected, turns parsed
    into prompt + chosen/rejected final turns, multi-turn histories kept whole."""
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY])
    params.data.cleaning.max_tokens = 2048
    prepared = tmp_path / "preference"
    prepare_data.main(params, "preference", [str(HH_SAMPLE)], prepared, tokenizer_dir=tiny_base)
    report = json.loads((prepared / "report.json").read_text())
    assert report["sources"][str(HH_SAMPLE)]["format"] == "preference"
    assert report["rows_in"] == 400 and report["rows_out"] > 350
    rows = [json.loads(line) for f in ("train.jsonl", "val.jsonl") for line in open(prepared / f)]
    assert all(r["chosen"][-1]["role"] == "assistant" and r["prompt"][-1]["role"] == "user" for r in rows)
    assert all(r["chosen"] != r["rejected"] for r in rows)
    assert any(len(r["prompt"]) >= 3 for r in rows)                       # multi-turn transcripts kept whole


@pytest.mark.slow
def test_a_reward_model_trained_on_real_hh_pairs_ranks_held_out_pairs_above_chance(tmp_path, embedded_base):
    """Anthropic HH-RLHF (the 400-pair harmless sample): a reward model trained by the real stage
    on 255 of its pairs ranks the other 143 better than chance, by a one-sided binomial test at
    p < 0.05. The demo model (135M) with LoRA on its top 8 layers, reading the last exchange, 3
    epochs (~10 minutes on 2 cores): about 58 % right; README, Reward models."""
    from math import comb

    from posttrain.config import AspectParams

    params = load_params([ROOT / "params.yaml"])
    params.data.cleaning.max_tokens = 2048
    params.data.val_fraction = 0.375
    prepared = tmp_path / "hh"
    prepare_data.main(params, "preference", [str(HH_SAMPLE)], prepared, tokenizer_dir=embedded_base)
    cfg = params.reward
    cfg.aspects = {"harmless": AspectParams(subsets=reward._subsets(prepared))}
    cfg.init, cfg.context_turns, cfg.epochs = "base", 1, 3
    cfg.eval_steps = cfg.save_steps = 1000          # no evaluation or checkpoint between step 0 and the end
    cfg.stats_pairs, cfg.checkpoint_dir = 8, str(tmp_path / "ckpt")
    reward.main(params, "harmless", embedded_base, prepared, tmp_path / "rm")

    metrics = json.loads((tmp_path / "rm" / "metrics.json").read_text())
    n = metrics["heldout_pairs"]
    right = round(metrics["heldout_accuracy"] * n)
    p_value = sum(comb(n, k) for k in range(right, n + 1)) / 2 ** n
    assert n >= 120 and metrics["train_pairs"] >= 200
    assert p_value < 0.05, f"{right} of {n} held-out HH pairs ranked right (p = {p_value:.3f})"


def test_two_processes_train_one_reward_model(tmp_path, tiny_base, preference_data):
    """A multi-GPU launch: both processes train; the main one writes the outputs."""
    _params(tmp_path)                                  # writes the overlay reward.yaml
    out = tmp_path / "rm"
    posttrain_in_two_processes("reward", "--aspect", "helpful", "--init", tiny_base, "--data", preference_data,
                               "--out", out, params=[ROOT / "params.yaml", TINY_OVERLAY, tmp_path / "reward.yaml"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 24 and m["heldout_accuracy"] >= 0.9
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "manifest.json").is_file()


def test_reward_models_on_one_init_score_their_shared_layers_once(tmp_path, tiny_base, preference_data):
    """Adapters on the top layer only: the evaluation runs the layers below once for every
    reward model, and each model's scores are what it gives alone."""
    from posttrain.models.reward_trunk import _shared_layers, score_aspects

    folders = {}
    for name, steps in (("first", 8), ("second", 16)):
        folders[name], work = tmp_path / name, tmp_path / f"work-{name}"
        work.mkdir()
        params = _params(work, max_steps=steps, lora={"r": 8, "alpha": 16, "dropout": 0.0,
                                                                         "layers": 1})
        reward.main(params, "helpful", tiny_base, preference_data, folders[name])
    layers = json.loads((folders["first"] / "adapter" / "adapter_config.json").read_text())["layers_to_transform"]
    assert _shared_layers(list(folders.values())) == layers[0] > 0
    prompt = [{"role": "user", "content": "What is 40 plus 3?"}]
    responses = ["40 + 3 = 43. #### 43", "I do not know, sorry.", "43", "40 + 3 = 44. #### 44, and more words"]
    requests = {"first": ([prompt] * 4, responses), "second": ([prompt] * 3, responses[1:])}
    shared = score_aspects(folders, requests, batch_size=2)
    for name, (prompts, answers) in requests.items():
        alone = RewardModel.load(folders[name]).score(prompts, answers, batch_size=2)
        assert shared[name] == pytest.approx(alone, abs=1e-4)
    assert shared["first"][1:] != pytest.approx(shared["second"], abs=1e-3)   # two different models
