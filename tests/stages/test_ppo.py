"""PPO (posttrain.rl.ppo): the RL stage with `algorithm: ppo` on a tiny model, exact resume, and a
toy task with a known reward on the embedded real model."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from conftest import ROOT, TINY_OVERLAY, train_tiny_reward_model, write_jsonl
from posttrain.config import PpoParams, load_params
from posttrain.rl.ppo import PpoTrainer, response_mask
from posttrain.rl.ppo_critic import AdapterCritic, RewardModelCritic
from posttrain.stages import prepare_data, rl
from posttrain.training import trainers as training


@pytest.fixture(scope="module")
def prompts(tmp_path_factory, tiny_base):
    tmp = tmp_path_factory.mktemp("ppo_prompts")
    rows = [{"prompt": f"Name {n} fruits.", "answer": None, "subset": "helpful", "expect": None,
             "constraint": {"type": "word_count", "n": n}} for n in range(2, 14)]
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY])
    params.data.cleaning.near_dup = False
    params.data.val_fraction = 0.25
    prepare_data.main(params, "prompts", [str(write_jsonl(tmp / "p.jsonl", rows))], tmp / "prompts",
                      tokenizer_dir=tiny_base)
    return tmp / "prompts"


@pytest.fixture(scope="module")
def helpful_rm(tmp_path_factory, tiny_base):
    """A tiny LoRA reward model (its quality does not matter here: it scores and seeds the critic)."""
    rows = [{"prompt": f"Name {n} fruits.", "chosen": " ".join(["apple"] * n), "rejected": "No.", "subset": "helpful"}
            for n in range(2, 30)]
    return train_tiny_reward_model(tmp_path_factory.mktemp("ppo_rm"), tiny_base, rows)


def _params(tmp_path, **stage):
    st = {"name": "helpfulness", "algorithm": "ppo", "subsets": ["helpful"],
          "rewards": [{"name": "reward_model", "aspect": "helpful"}, {"name": "constraint", "weight": 0.5}],
          "max_steps": 3, "prompts_per_step": 2, "num_generations": 2, "max_completion_length": 8,
          "save_steps": 1, "learning_rate": 1e-3, "ppo": {"epochs": 2, "mini_batches": 2, "kl_target": 0.5}, **stage}
    overlay = tmp_path / "rl.yaml"
    overlay.write_text(json.dumps({"rl": {"stages": [st], "selection_prompts": 3,
                                          "checkpoint_dir": str(tmp_path / "ckpt")}}))
    return load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay])


def test_ppo_stage_writes_the_chosen_checkpoint_its_curves_and_ppo_statistics(tmp_path, tiny_base, prompts,
                                                                             helpful_rm):
    out = tmp_path / "rl"
    manifest = rl.main(_params(tmp_path), "helpfulness", tiny_base, prompts, {"helpful": helpful_rm}, out)
    m = json.loads((out / "metrics.json").read_text())
    sel = json.loads((out / "selection.json").read_text())
    assert m["algorithm"] == "ppo" and m["steps"] == 3 and sorted(map(int, sel["scores"])) == [0, 1, 2, 3]
    assert m["critic_base"] == "shared"          # the reward model was trained from the stage's init model
    assert sel["scores"][str(m["chosen_step"])] == max(sel["scores"].values())
    rows = (out / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"reward", "kl", "value_loss", "clip_fraction", "approx_kl", "explained_variance", "kl_coef",
            "entropy", "completion_length", "heldout_reward"} <= set(header)
    logged = [dict(zip(header, r.split(","))) for r in rows[1:] if r.split(",")[header.index("value_loss")]]
    assert len(logged) == 3 and all(float(r["value_loss"]) >= 0 for r in logged)
    assert float(logged[0]["kl"]) == pytest.approx(0.0, abs=1e-4)       # step 1 samples from the init policy
    assert manifest["stage"] == "rl:helpfulness" and "reward:helpful" in manifest["inputs"]
    assert "PPO" in (out / "README.md").read_text()
    AutoModelForCausalLM.from_pretrained(out / "merged")


def test_ppo_needs_a_reward_model_for_its_critic(tmp_path):
    with pytest.raises(ValueError, match="PPO initialises its critic from a reward model"):
        _params(tmp_path, rewards=[{"name": "constraint"}])
    with pytest.raises(ValueError, match="num_generations must be at least 2"):
        _params(tmp_path, algorithm="grpo", num_generations=1)
    _params(tmp_path, num_generations=1)                                 # one sample per prompt is fine for PPO


def test_a_critic_from_a_reward_model_the_rewards_do_not_use_is_an_input_of_the_stage(tmp_path):
    from posttrain import dag

    params = _params(tmp_path, rewards=[{"name": "constraint"}], ppo={"critic": "helpful"})
    stage = next(s for s in dag.stages(params) if s.name == "rl_helpfulness")
    assert "results/reward/helpful" in stage.deps
    plotted = stage.plots[0]["results/rl/helpfulness/log.csv"]["y"]
    assert {"reward", "kl", "value_loss", "clip_fraction", "approx_kl", "explained_variance"} <= set(plotted)
    assert stage.args[stage.args.index("--reward") + 1] == "helpful=results/reward/helpful"


def test_the_shared_critic_is_the_reward_model_on_the_policys_own_weights(tmp_path, tiny_base, helpful_rm):
    """The reward model's adapter on the policy's model gives the values the reward model's own
    copy gives, while the policy and its reference (adapters off) are untouched."""
    from posttrain.models import reward_model

    cfg = load_params([ROOT / "params.yaml", TINY_OVERLAY]).rl
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    ids = torch.randint(5, base.config.vocab_size, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0                                        # left padding, as rollouts have
    with torch.no_grad():
        plain = base(input_ids=ids, attention_mask=mask).logits
    policy = get_peft_model(base, training.lora_config(base, cfg.lora, "CAUSAL_LM", "rl"))
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)                          # a policy that differs from its reference
        before = policy(input_ids=ids, attention_mask=mask).logits
    shared = AdapterCritic(policy, helpful_rm / "adapter")
    copy = RewardModelCritic(reward_model.load_model(helpful_rm, trainable=True)[0])
    with torch.no_grad():
        assert torch.allclose(shared.values(ids, mask, 6), copy.values(ids, mask, 6), atol=1e-5)
        assert torch.allclose(policy(input_ids=ids, attention_mask=mask).logits, before, atol=1e-6)
        with policy.disable_adapter():
            assert torch.allclose(policy(input_ids=ids, attention_mask=mask).logits, plain, atol=1e-5)
    assert not torch.allclose(before, plain, atol=1e-3)
    # PEFT's disable_adapter() just froze every adapter but the active one; the critic's forward
    # makes its adapter trainable again
    assert shared.values(ids, mask, 6).requires_grad and policy.active_adapter == "default"
    assert all(p.requires_grad for p in shared.parameters())
    shared.save(tmp_path / "critic")
    with torch.no_grad():
        for p in shared.parameters():
            p.zero_()
    shared.load(tmp_path / "critic")
    assert torch.allclose(shared.values(ids, mask, 6).detach(), copy.values(ids, mask, 6).detach(), atol=1e-5)


def test_a_shared_critic_needs_a_reward_model_trained_from_the_init_model(tmp_path, tiny_base, prompts, helpful_rm):
    other = tmp_path / "other_init"                        # the same weights under another artifact
    shutil.copytree(tiny_base, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "stage": "another"}))
    with pytest.raises(ValueError, match="critic_base: shared needs a LoRA reward model trained from"):
        rl.main(_params(tmp_path, ppo={"critic_base": "shared"}), "helpfulness", other, prompts,
                {"helpful": helpful_rm}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_response_mask_ends_at_the_first_stop_token():
    new = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 9], [5, 6, 7, 8, 9]])
    assert response_mask(new, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def _toy_trainer(model_dir, run_dir, reward_fn, prompts, critic_base="copy", **overrides):
    """A PpoTrainer on `model_dir` with a fresh critic (LoRA + value head on the same model), as a
    copy of its own or as a second adapter on the policy (`critic_base: shared`)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = load_params([ROOT / "params.yaml", TINY_OVERLAY]).rl
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    policy = get_peft_model(base, training.lora_config(base, cfg.lora, "CAUSAL_LM", "rl"))
    seq_cls = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    seq_cls.config.pad_token_id = tok.pad_token_id
    critic = RewardModelCritic(get_peft_model(seq_cls, training.lora_config(seq_cls, cfg.lora, "SEQ_CLS", "reward")))
    if critic_base == "shared":                   # the same fresh critic, saved as a reward model's adapter
        critic.save(run_dir.parent / f"{run_dir.name}-rm")
        critic = AdapterCritic(policy, run_dir.parent / f"{run_dir.name}-rm")
    st = SimpleNamespace(**{"name": "toy", "seed": 0, "beta": 0.05, "learning_rate": 1e-3, "temperature": 1.0,
                            "max_steps": 4, "save_steps": 2, "prompts_per_step": 2, "num_generations": 2,
                            "max_completion_length": 8, "ppo": PpoParams(epochs=2, mini_batches=2), **overrides})
    return PpoTrainer(policy, critic, tok, prompts, reward_fn, run_dir, st, cfg)


def _adapter(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}


@pytest.mark.parametrize("critic_base", ["copy", "shared"])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, tiny_base, critic_base):
    """Stopped after its step-2 checkpoint (a reward function failing at step 3), then resumed:
    the same weights, critic and log as a run that never stopped."""
    rows = [{"prompt": [{"role": "user", "content": f"Say {w}."}]} for w in ("yes", "no", "maybe", "hello")]

    def letters(prompts, completions, columns):
        return [sum(c.isalpha() for c in m[0]["content"]) / 10 for m in completions]

    full = _toy_trainer(tiny_base, tmp_path / "full", letters, rows, critic_base)
    full.train()
    calls = {"n": 0}

    def failing(prompts, completions, columns):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("node lost")
        return letters(prompts, completions, columns)

    broken = _toy_trainer(tiny_base, tmp_path / "run", failing, rows, critic_base)
    with pytest.raises(RuntimeError, match="node lost"):
        broken.train()
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = _toy_trainer(tiny_base, tmp_path / "run", letters, rows, critic_base)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    a, b = _adapter(full), _adapter(resumed)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    ca, cb = full.critic.parameters(), resumed.critic.parameters()
    assert len(ca) == len(cb) and all(torch.allclose(x, y, atol=1e-6) for x, y in zip(ca, cb))
    assert any(not torch.equal(x, y) for x, y in zip(ca, _toy_trainer(tiny_base, tmp_path / "fresh", letters, rows,
                                                                      critic_base).critic.parameters()))
    assert [r["reward"] for r in resumed.state.log_history] == \
        pytest.approx([r["reward"] for r in full.state.log_history])
    shutil.rmtree(tmp_path / "full")


CAPITALS = ("France", "Japan", "Italy", "Canada", "Egypt", "Peru", "Kenya", "Norway")


def test_on_a_toy_task_with_a_known_reward_ppo_raises_it_with_kl_bounded(tmp_path, embedded_base):
    """The real demo model, a reward it can earn by itself (shorter answers are better), and an
    adaptive KL target: the sampled reward rises, answers shorten, and the KL to the init model
    stays under its target."""
    rows = [{"prompt": [{"role": "user", "content": f"What is the capital of {c}?"}]} for c in CAPITALS]

    def brevity(prompts, completions, columns):
        return [-len(m[0]["content"].split()) / 10 for m in completions]

    trainer = _toy_trainer(embedded_base, tmp_path / "toy", brevity, rows, max_steps=8, save_steps=100,
                           prompts_per_step=8, max_completion_length=12, learning_rate=2e-4, beta=0.05,
                           ppo=PpoParams(epochs=2, mini_batches=2, kl_target=4.0, kl_horizon=16))
    trainer.train()
    log = trainer.state.log_history

    def mean(key, part):
        return sum(r[key] for r in part) / len(part)

    assert mean("reward", log[-3:]) > mean("reward", log[:3]) + 0.1
    assert mean("completions/mean_length", log[-3:]) < mean("completions/mean_length", log[:3])
    assert max(r["kl"] for r in log) < 4.0
    assert log[-1]["kl_coef"] < 0.05              # KL below target: the adaptive coefficient relaxed


def test_a_stop_signal_saves_the_step_and_ends_training(tmp_path, tiny_base, stop_signal):
    """SIGUSR1 during a PPO step: that step is saved as a complete checkpoint and the loop ends
    (the stage then exits 75 and its rerun resumes there)."""
    from posttrain.core import checkpoints, preemption

    rows = [{"prompt": [{"role": "user", "content": f"Say {w}."}]} for w in ("yes", "no", "maybe", "hello")]
    trainer = _toy_trainer(tiny_base, tmp_path / "run", lambda p, c, cols: [0.5] * len(c), rows, "copy")
    stop_signal()
    trainer.train()
    assert preemption.requested()
    assert trainer.state.global_step == 1
    assert checkpoints.latest_complete(tmp_path / "run").name == "checkpoint-1"
