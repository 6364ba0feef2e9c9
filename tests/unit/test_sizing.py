"""The production recipe, checked on a CPU: Qwen3-30B-A3B built on the meta device."""

import pytest

from conftest import ROOT
from posttrain.config import load_params
from posttrain.training.sizing import plan_sft


@pytest.fixture(scope="module")
def plan():
    params = load_params([ROOT / "params.yaml", ROOT / "recipes" / "qwen3-30b-a3b.yaml"])
    return plan_sft(params, gpus=params.sft.gpus, strategy=params.sft.strategy)


def test_qwen3_30b_a3b_parameter_counts(plan):
    assert plan.architecture == "qwen3_moe"
    assert plan.total_params == 30_532_122_624          # "30.5B" on the model card
    assert plan.active_params_per_token == 3_353_032_704  # "3.3B activated"
    # LoRA r=16: attention (q,k,v,o) + fused experts (gate_up, down) in 48 layers
    assert plan.trainable_params == 642_514_944


def test_adapters_on_attention_and_experts_never_the_router(plan):
    kinds = set(plan.adapter_modules)
    assert {"self_attn.q_proj.lora_A", "self_attn.o_proj.lora_B"} <= kinds
    assert any(k.startswith("mlp.experts") for k in kinds)
    assert not plan.router_has_adapter
    assert not any(k.startswith("mlp.gate") for k in kinds)


def test_memory_estimate_for_8_gpus_fsdp(plan):
    mem = plan.memory_gb_per_gpu
    assert plan.gpus == 8 and plan.strategy == "fsdp"
    assert mem["weights"] == pytest.approx(30_532_122_624 * 2 / 8 / 1024**3, abs=0.01)   # 7.11 GB bf16 shard
    assert mem["trainable_state"] == pytest.approx(642_514_944 * 16 / 8 / 1024**3, abs=0.01)
    assert mem["logits"] == pytest.approx(4 * 4096 * 151936 * 4 / 1024**3, abs=0.01)
    assert 15 < mem["total"] < 40   # fits an 80 GB H100 with room for buffers


def test_ppo_memory_plan_one_shared_base_for_policy_reference_and_critic():
    from posttrain import dag
    from posttrain.training.sizing import plan_ppo

    params = load_params([ROOT / "params.yaml", ROOT / "recipes" / "qwen3-30b-a3b.yaml"])
    ppo = plan_ppo(params, "helpfulness", gpus=8)
    mem, shard = ppo.memory_gb_per_gpu, 30_532_122_624 * 2 / 8 / 1024**3
    assert ppo.critic_base == "shared" and ppo.rollout_sequences == 64
    assert mem["weights"] == pytest.approx(shard, abs=0.01)          # one bf16 copy for three roles
    assert mem["reward_model"] == pytest.approx(shard, abs=0.01)     # the frozen scorer
    assert ppo.policy_trainable_params == 642_514_944
    assert ppo.critic_trainable_params == 642_514_944 + 2048         # the reward model's LoRA + score head
    assert mem["total"] < 60                                         # fits an 80 GB GPU
    copy = params.model_copy(deep=True)
    copy.rl.stages[0].ppo.critic_base = "copy"
    assert plan_ppo(copy, "helpfulness", gpus=8).memory_gb_per_gpu["weights"] == pytest.approx(2 * shard, abs=0.01)
    other = params.model_copy(deep=True)
    other.reward.init = "base"
    with pytest.raises(ValueError, match="critic_base: shared needs reward.init"):
        plan_ppo(other, "helpfulness")
    # one process spans the node's GPUs; the GRPO stage keeps its 8 FSDP processes
    table = {s.name: s for s in dag.stages(params)}
    assert table["rl_helpfulness"].launcher == "" and "--num_processes 8" in table["rl_reasoning"].launcher


def test_the_dpo_variant_plans_one_copy_of_the_weights():
    from posttrain.training.sizing import plan_preference

    files = [ROOT / "params.yaml", ROOT / "recipes" / "qwen3-30b-a3b.yaml",
             ROOT / "recipes" / "variants" / "qwen3-30b-a3b-dpo.yaml"]
    params = load_params(files)
    dpo = plan_preference(params, "dpo")
    sft = plan_sft(params, gpus=8, strategy="fsdp")
    assert dpo.algorithm == "dpo" and dpo.reference == "adapter-off" and "reference" not in dpo.memory_gb_per_gpu
    assert dpo.trainable_params == sft.trainable_params          # the SFT stage's adapters
    assert dpo.memory_gb_per_gpu["weights"] == sft.memory_gb_per_gpu["weights"]
    assert dpo.sequences_per_step == 4                            # chosen and rejected of 2 pairs per GPU
    assert dpo.memory_gb_per_gpu["total"] < 80
    params.preference.method = "full"                              # full fine-tuning: TRL copies the reference
    full = plan_preference(params, "dpo")
    assert full.reference == "copy" and full.memory_gb_per_gpu["reference"] == full.memory_gb_per_gpu["weights"]
    with pytest.raises(ValueError, match="not in preference.stages"):
        plan_preference(params, "kto")
