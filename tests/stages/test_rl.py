"""RL stage (GRPO with TRL, rejection sampling) on a tiny model: outputs, checkpoint selection, guards."""

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from conftest import ROOT, TINY_OVERLAY, posttrain_in_two_processes, write_jsonl
from posttrain.config import load_params
from posttrain.rl.prompts import prompt_rows
from posttrain.rl.reward_terms import RewardFunctionError
from posttrain.stages import prepare_data, rl
from posttrain.verifiers import rewards


@pytest.fixture(scope="module")
def prompts(tmp_path_factory, tiny_base):
    tmp = tmp_path_factory.mktemp("prompts")
    rows = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b), "subset": "arithmetic", "expect": None,
             "constraint": None} for a in range(2, 12) for b in (3, 5)]
    rows += [{"prompt": f"Name {n} fruits.", "answer": None, "subset": "helpful", "expect": None,
              "constraint": {"type": "word_count", "n": n}} for n in range(2, 12)]
    src = write_jsonl(tmp / "prompts.jsonl", rows)
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY])
    params.data.cleaning.near_dup = False
    params.data.val_fraction = 0.25
    prepare_data.main(params, "prompts", [str(src)], tmp / "prompts", tokenizer_dir=tiny_base)
    return tmp / "prompts"


def _params(tmp_path, **stage):
    st = {"name": "reasoning", "subsets": ["arithmetic"], "rewards": [{"name": "accuracy"}], "max_steps": 3,
          "prompts_per_step": 2, "num_generations": 2, "max_completion_length": 8, "save_steps": 1,
          "learning_rate": 1e-3, **stage}
    overlay = tmp_path / "rl.yaml"
    overlay.write_text(json.dumps({"rl": {"stages": [st], "selection_prompts": 4,
                                          "checkpoint_dir": str(tmp_path / "ckpt")}}))
    return load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay])


def test_grpo_stage_writes_the_best_checkpoint_and_its_curves(tmp_path, tiny_base, prompts):
    out = tmp_path / "rl"
    manifest = rl.main(_params(tmp_path), "reasoning", tiny_base, prompts, {}, out)
    m = json.loads((out / "metrics.json").read_text())
    sel = json.loads((out / "selection.json").read_text())
    assert sorted(map(int, sel["scores"])) == [0, 1, 2, 3]          # step 0 and every checkpoint
    best = max(sel["scores"].values())
    assert sel["scores"][str(sel["chosen_step"])] == best and m["chosen_step"] == sel["chosen_step"]
    assert m["heldout_reward_start"] == sel["scores"]["0"] and m["steps"] == 3
    assert m["kl_last"] is not None and m["train_reward_first"] is not None
    assert manifest["stage"] == "rl:reasoning" and "init" in manifest["inputs"]
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert {"reward", "kl", "completion_length", "heldout_reward"} <= set(header)
    for name in ("curves.png", "README.md", "adapter/adapter_config.json", "merged/config.json"):
        assert (out / name).is_file(), name
    AutoModelForCausalLM.from_pretrained(out / "merged")  # the next stage's init loads


def test_none_for_a_whole_batch_is_counted(tmp_path, tiny_base, prompts):
    """Arithmetic prompts carry no constraint: that reward cannot score any batch."""
    out = tmp_path / "rl"
    rl.main(_params(tmp_path, max_steps=2, rewards=[{"name": "accuracy"}, {"name": "constraint"}]),
            "reasoning", tiny_base, prompts, {}, out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["none_batches"] == {"constraint": 2}


def test_a_raising_reward_stops_the_stage_and_keeps_previous_outputs(tmp_path, tiny_base, prompts):
    out = tmp_path / "rl"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    missing_rm = tmp_path / "no_such_reward_model"
    params = _params(tmp_path, rewards=[{"name": "reward_model", "aspect": "helpful"}])
    with pytest.raises(RewardFunctionError, match="'rm_no_such_reward_model' raised.*promotes no checkpoint"):
        rl.main(params, "reasoning", tiny_base, prompts, {"helpful": missing_rm}, out)
    assert (out / "previous.txt").read_text() == "kept"


def test_nan_reward_stops_the_stage(tmp_path, tiny_base, prompts):
    @rewards.register("test_nan")
    def _nan():
        def fn(prompts, completions, **columns):
            return [float("nan")] * len(completions)
        return fn

    try:
        with pytest.raises(FloatingPointError, match="'fn' returned nan"):
            rl.main(_params(tmp_path, rewards=[{"name": "test_nan"}]), "reasoning", tiny_base, prompts, {},
                    tmp_path / "rl")
        assert not (tmp_path / "rl").exists()
    finally:
        rewards.REGISTRY.pop("test_nan")


@pytest.fixture
def even_length_reward():
    """1.0 for completions of an even number of characters: a verifier a random model passes about
    half the time."""
    @rewards.register("test_even")
    def _even():
        def fn(prompts, completions, **columns):
            return [float(len(c) % 2 == 0) for c in completions]
        return fn

    yield "test_even"
    rewards.REGISTRY.pop("test_even")


def test_rejection_sampling_stage_fine_tunes_on_the_accepted_answers(tmp_path, tiny_base, prompts,
                                                                     even_length_reward):
    out = tmp_path / "rl"
    params = _params(tmp_path, algorithm="rejection_sampling", rewards=[{"name": even_length_reward}],
                     num_generations=4, keep_per_prompt=2, temperature=1.0, max_steps=6, save_steps=3,
                     learning_rate=5e-3)
    manifest = rl.main(params, "reasoning", tiny_base, prompts, {}, out)
    m = json.loads((out / "metrics.json").read_text())
    train = [r for r in prompt_rows(prompts / "train.jsonl", ["arithmetic"])]
    s = m["samples"]
    assert s["samples"] == 4 * len(train) == s["accepted"] + s["rejected"] and s["prompts"] == len(train)
    sampled = Path(manifest["checkpoints"]) / "samples"           # drawn once, beside the checkpoints
    accepted = [json.loads(line) for line in open(sampled / "train.jsonl")]
    rejected = [json.loads(line) for line in open(sampled / "rejected.jsonl")]
    assert len(accepted) == s["accepted"] > 0 and len(rejected) == s["rejected"] > 0
    assert all(len(r["messages"][-1]["content"]) % 2 == 0 and r["reward"] == 1.0 for r in accepted)
    assert {r["reason"] for r in rejected} <= {"below_min_reward", "duplicate", "over_keep_per_prompt", "empty"}
    assert max(Counter(r["source_id"] for r in accepted).values()) <= 2            # keep_per_prompt
    # trained on them: the answers' loss falls; the selection scored step 0 and both checkpoints
    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "log.csv")) if r["loss"]]
    assert losses[-1] < losses[0]
    assert sorted(map(int, json.loads((out / "selection.json").read_text())["scores"])) == [0, 3, 6]
    assert m["steps"] == 6 and manifest["stage"] == "rl:reasoning"
    assert "accepted answers" in (out / "README.md").read_text()
    AutoModelForCausalLM.from_pretrained(out / "merged")
    # a rerun (outputs deleted) trains on the samples it drew, not new ones
    drawn = (sampled / "report.json").stat().st_mtime_ns
    rl.main(params, "reasoning", tiny_base, prompts, {}, tmp_path / "again")
    assert (sampled / "report.json").stat().st_mtime_ns == drawn
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["samples"] == s


def test_two_processes_split_the_rejection_samples(tmp_path, tiny_base, prompts):
    """A multi-GPU launch: each process answers its share of the prompts, the main one gathers them
    and every process trains on all of them."""
    _params(tmp_path, algorithm="rejection_sampling", rewards=[{"name": "length", "max_words": 1}],
            min_reward=-1.0, num_generations=2, max_steps=2, save_steps=2)   # every answer passes
    posttrain_in_two_processes("rl", "--stage", "reasoning", "--init", tiny_base, "--prompts", prompts,
                               "--out", tmp_path / "rl", params=[ROOT / "params.yaml", TINY_OVERLAY,
                                                                 tmp_path / "rl.yaml"])
    folder = Path(json.loads((tmp_path / "rl" / "manifest.json").read_text())["checkpoints"]) / "samples"
    parts = [{r["source_id"] for r in json.loads((folder / f"part-{i}.json").read_text())["accepted"]}
             for i in (0, 1)]
    train = prompt_rows(prompts / "train.jsonl", ["arithmetic"])
    assert parts[0] and parts[1] and not parts[0] & parts[1] and parts[0] | parts[1] == {r["id"] for r in train}
    m = json.loads((tmp_path / "rl" / "metrics.json").read_text())
    assert m["samples"]["prompts"] == len(train) and m["samples"]["samples"] == 2 * len(train) and m["steps"] == 2
    AutoModelForCausalLM.from_pretrained(tmp_path / "rl" / "merged")


def test_rejection_sampling_that_accepts_nothing_says_what_to_change(tmp_path, tiny_base, prompts):
    out = tmp_path / "rl"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    params = _params(tmp_path, algorithm="rejection_sampling", rewards=[{"name": "accuracy"}], num_generations=1)
    with pytest.raises(ValueError, match=r"accepted none of 15 answers \(min_reward 1.0\).*below_min_reward.*"
                                         r"Lower min_reward"):
        rl.main(params, "reasoning", tiny_base, prompts, {}, out)
    assert (out / "previous.txt").read_text() == "kept"


@pytest.mark.parametrize("micro_batches", [1, 3])
def test_micro_batches_train_one_generation_batch_per_step(tmp_path, tiny_base, prompts, micro_batches):
    """3 prompts x 2 completions a step, scored together, trained in 1 or 3 micro-batches: the same
    number of optimiser steps and of completions a step either way."""
    sizes = []

    @rewards.register("test_count")
    def _count():
        def fn(prompts, completions, **columns):
            sizes.append(len(completions))
            return [0.0] * len(completions)
        return fn

    try:
        out = tmp_path / "rl"
        rl.main(_params(tmp_path, max_steps=2, save_steps=2, prompts_per_step=3, micro_batches=micro_batches,
                        rewards=[{"name": "accuracy"}, {"name": "test_count"}]),
                "reasoning", tiny_base, prompts, {}, out)
    finally:
        rewards.REGISTRY.pop("test_count")
    assert sizes.count(6) == 2 and json.loads((out / "metrics.json").read_text())["steps"] == 2
    assert all(n in (6, 4) for n in sizes)  # training batches, and the 4 held-out prompts at selection


def test_a_stage_scales_its_advantages_as_it_asks(tmp_path, tiny_base, prompts):
    """rl.stages[].scale_rewards reaches TRL's GRPO (read back from the checkpoint's arguments)."""
    import torch

    rl.main(_params(tmp_path, max_steps=1, save_steps=1, scale_rewards="batch"), "reasoning", tiny_base, prompts, {},
            tmp_path / "rl")
    (saved,) = (tmp_path / "ckpt").glob("rl-reasoning-*/checkpoint-1/training_args.bin")
    assert torch.load(saved, weights_only=False).scale_rewards == "batch"


def _epoch_at(ckpt_dir, step):
    (state,) = ckpt_dir.glob(f"rl-reasoning-*/checkpoint-{step}/trainer_state.json")
    return json.loads(state.read_text())["epoch"]


def test_two_processes_share_a_step_and_one_writes_the_outputs(tmp_path, tiny_base, prompts):
    """A multi-GPU launch: a step is the prompts x generations params declare, split over the
    processes (it was that many per process), and the main process writes the outputs."""
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    rl.main(_params(one, max_steps=2, save_steps=2, prompts_per_step=4), "reasoning", tiny_base, prompts, {},
            one / "rl")
    _params(two, max_steps=2, save_steps=2, prompts_per_step=4)      # writes the overlay rl.yaml
    posttrain_in_two_processes("rl", "--stage", "reasoning", "--init", tiny_base, "--prompts", prompts,
                               "--out", two / "rl", params=[ROOT / "params.yaml", TINY_OVERLAY, two / "rl.yaml"])
    assert _epoch_at(two / "ckpt", 2) == _epoch_at(one / "ckpt", 2)  # the same prompts a step
    m = json.loads((two / "rl" / "metrics.json").read_text())
    assert m["steps"] == 2 and sorted(json.loads((two / "rl" / "selection.json").read_text())["scores"]) == \
        ["0", "2"]
    AutoModelForCausalLM.from_pretrained(two / "rl" / "merged")


def test_a_step_must_split_over_the_gpus(tmp_path):
    from posttrain.config import ConfigError

    overlay = tmp_path / "gpus.yaml"
    overlay.write_text(json.dumps({"rl": {"gpus": 8, "strategy": "ddp", "stages": [
        {"name": "reasoning", "subsets": ["arithmetic"], "rewards": [{"name": "accuracy"}], "prompts_per_step": 3,
         "num_generations": 4}]}}))
    with pytest.raises(ConfigError, match=r"its 12 completions a step .* do not split over 8 process\(es\) x 1 "
                                          r"micro_batches; make prompts_per_step x num_generations a multiple of 8"):
        load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay])


def test_a_stage_overrides_the_shared_adapter_key_by_key(tmp_path, tiny_base, prompts):
    params = _params(tmp_path, max_steps=1, lora={"r": 4, "layers": 1})
    shared, own = params.rl.lora, params.rl.lora_for(params.rl.stages[0])
    assert (own.r, own.layers, own.alpha, own.target_modules) == (4, 1, shared.alpha, shared.target_modules)
    rl.main(params, "reasoning", tiny_base, prompts, {}, tmp_path / "rl")
    adapter = json.loads((tmp_path / "rl" / "adapter" / "adapter_config.json").read_text())
    n_layers = json.loads((tiny_base / "config.json").read_text())["num_hidden_layers"]
    assert adapter["r"] == 4 and adapter["layers_to_transform"] == [n_layers - 1]


def test_stage_params_are_validated(tmp_path):
    from posttrain.config import ConfigError

    with pytest.raises(ConfigError, match="unknown reward function 'acc'"):
        _params(tmp_path, rewards=[{"name": "acc"}])
    with pytest.raises(ConfigError, match="aspect"):
        _params(tmp_path, rewards=[{"name": "reward_model"}])
    with pytest.raises(ConfigError, match="init 'later'"):
        _params(tmp_path, init="later")
    with pytest.raises(ConfigError, match="taken"):
        _params(tmp_path, name="sft")
    with pytest.raises(ConfigError, match="rl stage 'reasoning': lora: rank: Extra inputs are not permitted"):
        _params(tmp_path, lora={"rank": 4})
    with pytest.raises(ConfigError,
                       match=r"its 4 completions a step .* do not split over 1 process\(es\) x 3 micro_batches"):
        _params(tmp_path, micro_batches=3)
    with pytest.raises(ConfigError, match=r"its 3 completions a step \(prompts_per_step\) .* a multiple of 2"):
        _params(tmp_path, algorithm="rejection_sampling", prompts_per_step=3, micro_batches=2)
    with pytest.raises(ConfigError, match="ppo.mini_batches"):
        _params(tmp_path, algorithm="ppo", micro_batches=2, rewards=[{"name": "reward_model", "aspect": "helpful"}])


def test_missing_reward_model_for_a_stage_fails_the_dag(tmp_path):
    from posttrain import dag

    params = _params(tmp_path, rewards=[{"name": "reward_model", "aspect": "honesty"}])
    with pytest.raises(ValueError, match=r"reward model\(s\) \['honesty'\].*defines \['helpful'"):
        dag.stages(params)


def test_rerun_of_a_finished_stage_restores_instead_of_training_on(tmp_path, tiny_base, prompts):
    """Outputs deleted after a finished run: the rerun restores the final checkpoint and writes the
    same model (a resumed HF trainer would take one step past max_steps)."""
    import hashlib
    import shutil

    params = _params(tmp_path, max_steps=2)
    first = rl.main(params, "reasoning", tiny_base, prompts, {}, tmp_path / "rl")
    digest = lambda: hashlib.sha256((tmp_path / "rl/adapter/adapter_model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    before, sel = digest(), (tmp_path / "rl/selection.json").read_text()
    shutil.rmtree(tmp_path / "rl")
    again = rl.main(params, "reasoning", tiny_base, prompts, {}, tmp_path / "rl")
    assert again["metrics"]["steps"] == first["metrics"]["steps"] == 2
    assert again["metrics"]["resumed_from_step"] == 2
    assert digest() == before and (tmp_path / "rl/selection.json").read_text() == sel


def test_generation_on_merged_lora_weights_matches_the_adapter_and_restores_it(tiny_base):
    """The policy generates on merged weights (faster); what it generates is what the unmerged
    adapter generates, and afterwards the base weights and the adapter are as before. Sampling in
    bfloat16 (mixed precision on a CPU) uses bfloat16 copies and puts the float32 weights back
    bit for bit."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from posttrain.inference.generation import generate, merged_adapter, sampling_weights

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chats = [[{"role": "user", "content": f"What is {a} plus 3?"}] for a in range(4)]
    plain = generate(model, tokenizer, chats, max_new_tokens=8)
    with sampling_weights(model):
        assert all(m.merged for m in model.modules() if hasattr(m, "merged") and hasattr(m, "lora_A"))
        merged = generate(model, tokenizer, chats, max_new_tokens=8)
    assert merged == plain
    after = model.state_dict()
    assert not any(m.merged for m in model.modules() if hasattr(m, "merged") and hasattr(m, "lora_A"))
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)

    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    with sampling_weights(base, torch.bfloat16):
        assert {p.dtype for p in base.parameters()} == {torch.bfloat16}
        generate(base, tokenizer, chats, max_new_tokens=8)
    assert all(torch.equal(weights[k], v) and v.dtype == torch.float32 for k, v in base.state_dict().items())
    with merged_adapter(AutoModelForCausalLM.from_pretrained(tiny_base)) as plain_model:   # no adapter: a no-op
        assert not hasattr(plain_model, "peft_config")


def test_a_stage_trained_under_a_system_prompt_is_saved_with_it_as_the_default(tmp_path, tiny_base, prompts):
    """The RL-first path trains under instructions in a system prompt; its saved chat template
    opens with them, so evaluation and serving see what training saw."""
    from transformers import AutoTokenizer

    out = tmp_path / "rl"
    rl.main(_params(tmp_path, max_steps=1, system_prompt="Answer as '#### N'."), "reasoning", tiny_base, prompts, {},
            out)
    chat = [{"role": "user", "content": "What is 2 plus 3?"}]
    for folder in ("merged", "adapter"):
        text = AutoTokenizer.from_pretrained(out / folder).apply_chat_template(chat, tokenize=False)
        assert text.startswith("<|im_start|>system\nAnswer as '#### N'.<|im_end|>"), folder
    own = [{"role": "system", "content": "Be brief."}, *chat]
    assert "#### N" not in AutoTokenizer.from_pretrained(out / "merged").apply_chat_template(own, tokenize=False)
