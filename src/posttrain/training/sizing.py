"""Sizing a recipe without its weights: build the architecture on the `meta` device, apply the
recipe's LoRA config, count parameters, list what carries adapters, and estimate GPU memory per
device for the recipe's parallelism. This is how the Qwen3-30B-A3B recipe is checked on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

# Public config values (config.json) of the production recipe's models, so it can be sized with no
# hub access.
KNOWN_CONFIGS = {
    "Qwen/Qwen3-30B-A3B-Base": dict(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
        head_dim=128, num_experts=128, num_experts_per_tok=8, decoder_sparse_step=1, mlp_only_layers=[],
        norm_topk_prob=True, router_aux_loss_coef=0.001, max_position_embeddings=32768, rms_norm_eps=1e-6,
        tie_word_embeddings=False, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    ),
    # the production recipe's distillation student (same tokenizer as the 30B)
    "Qwen/Qwen3-4B-Base": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
        rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    ),
}
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "nf4": 0.5}


@dataclass
class SftPlan:
    architecture: str
    total_params: int
    trainable_params: int
    active_params_per_token: int
    adapter_modules: list[str]          # module kinds carrying adapters (layer index removed)
    router_has_adapter: bool
    gpus: int
    strategy: str
    memory_gb_per_gpu: dict[str, float]

    def as_dict(self) -> dict:
        return asdict(self)


def config_for(base: str):
    from transformers import AutoConfig

    if base in KNOWN_CONFIGS:
        values = dict(KNOWN_CONFIGS[base])
        return AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoConfig.from_pretrained(base)


def meta_model(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def plan_sft(params, gpus: int = 8, strategy: str = "fsdp", micro_batch_tokens: int | None = None) -> SftPlan:
    """Parameter counts and a per-GPU memory estimate for `params.sft` on `params.model.base`."""
    from peft import get_peft_model

    from posttrain.training.trainers import ROUTER_MARKERS, lora_config

    cfg = params.sft
    config = config_for(params.model.base)
    model = meta_model(config)
    total = sum(p.numel() for p in model.parameters())
    active = _active_params(model, config)
    if cfg.method == "full":
        trainable, kinds = total, ["(all)"]
    else:
        model = get_peft_model(model, lora_config(model, cfg.lora, "CAUSAL_LM", "sft"))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        kinds = sorted({_kind(n) for n, p in model.named_parameters() if p.requires_grad})
    router = any(any(m in n for m in ROUTER_MARKERS) for n in kinds)
    tokens = micro_batch_tokens or cfg.batch_size * cfg.max_length
    memory = _memory(config, total, trainable, cfg.method, gpus, strategy, tokens, cfg.gradient_checkpointing)
    return SftPlan(config.model_type, total, trainable, active, kinds, router, gpus, strategy, memory)


def _kind(name: str) -> str:
    """'base_model.model.model.layers.7.self_attn.q_proj.lora_A.default.weight' -> 'self_attn.q_proj.lora_A'."""
    parts = name.split(".")
    if "layers" in parts:
        parts = parts[parts.index("layers") + 2:]
    return ".".join(p for p in parts if p not in ("default", "weight"))


def _active_params(model, config) -> int:
    """Parameters used per token: MoE experts count only the routed share."""
    n_experts = getattr(config, "num_experts", None)
    if not n_experts:
        return sum(p.numel() for p in model.parameters())
    k = config.num_experts_per_tok
    total = 0
    for name, p in model.named_parameters():
        total += p.numel() * k // n_experts if ".mlp.experts." in name else p.numel()
    return total


def _activation_bytes(config, tokens: int, checkpointing: bool) -> tuple[int, int]:
    """(activations kept for the backward pass over all layers, one layer's recompute peak), in
    bytes (bf16): with checkpointing each layer's input (tokens x hidden) is kept; without, every
    layer's attention projections and routed experts' intermediates."""
    h, layers = config.hidden_size, config.num_hidden_layers
    inter = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    routed = getattr(config, "num_experts_per_tok", 1)
    q_dim = config.num_attention_heads * (getattr(config, "head_dim", None) or h // config.num_attention_heads)
    layer_peak = tokens * (4 * q_dim + routed * 3 * inter) * 2
    kept = tokens * h * 2 * layers if checkpointing else tokens * (4 * q_dim + routed * 3 * inter + 4 * h) * 2 * layers
    return kept, layer_peak


def _memory(config, total: int, trainable: int, method: str, gpus: int, strategy: str, tokens: int,
            checkpointing: bool) -> dict[str, float]:
    """A first-order estimate, in GB per GPU:
    - weights: bf16 (nf4 for QLoRA), sharded across GPUs under FSDP/ZeRO-3, replicated under DDP;
    - trainable state: fp32 master weight + gradient + two Adam moments = 16 bytes/param, sharded likewise;
    - activations: with checkpointing, each layer's input (tokens x hidden, bf16) is kept, plus one
      layer's recompute peak (attention projections and the routed experts' intermediate);
    - logits: tokens x vocab in fp32 for the loss.
    Excludes allocator fragmentation and communication buffers (add ~10-20 %)."""
    shard = gpus if strategy in ("fsdp", "zero3") else 1
    weight_bytes = BYTES["nf4" if method == "qlora" else "bf16"]
    kept, layer_peak = _activation_bytes(config, tokens, checkpointing)
    gb = 1024 ** 3
    out = {
        "weights": total * weight_bytes / shard / gb,
        "trainable_state": trainable * 16 / shard / gb,
        "activations": (kept + layer_peak) / gb,
        "logits": tokens * config.vocab_size * 4 / gb,
    }
    out["total"] = sum(out.values())
    return {k: round(v, 2) for k, v in out.items()}


@dataclass
class PpoPlan:
    stage: str
    gpus: int
    critic_base: str                    # shared: the critic is an adapter on the policy's weights
    policy_trainable_params: int
    critic_trainable_params: int
    rollout_sequences: int
    sequence_tokens: int                # prompt + completion
    memory_gb_per_gpu: dict[str, float]

    def as_dict(self) -> dict:
        return asdict(self)


def plan_ppo(params, stage: str, gpus: int = 8, prompt_tokens: int = 512) -> PpoPlan:
    """Per-GPU memory of a PPO stage (posttrain.rl.ppo). PPO runs as one process whose model layers
    are spread over the node's `gpus` GPUs (accelerate's device map), so each model-sized term is
    divided by `gpus`:
    - weights: the init model in bf16 once: policy, reference (adapters off) and a shared critic
      are views of it; a `copy` critic adds a second one;
    - reward_model: the frozen reward model scoring rollouts, another bf16 copy;
    - trainable_state: the policy's and the critic's adapters (fp32 weight, gradient, two Adam
      moments: 16 bytes per parameter);
    - kv_cache: sampling the rollout (sequences x tokens x layers x K and V x kv heads x head dim, bf16);
    - activations: one mini-batch update (each layer's input with checkpointing, plus one layer's
      peak), for the policy and then the critic;
    - logits: the mini-batch's completion tokens x vocabulary in fp32 (log-softmax, entropy;
      about four such tensors), on the GPU holding the LM head (not divided).
    Excludes allocator fragmentation (add ~10-20 %)."""
    from peft import get_peft_model

    from posttrain.training.trainers import lora_config

    cfg = params.rl
    names = [s.name for s in cfg.stages]
    if stage not in names:
        raise ValueError(f"rl stage {stage!r} is not in rl.stages ({names})")
    st = cfg.stages[names.index(stage)]
    init = "sft" if st.init == "previous" and names.index(stage) == 0 else st.init
    shared = st.ppo.critic_base != "copy" and params.reward.init == init and params.reward.method == "lora"
    if st.ppo.critic_base == "shared" and not shared:
        raise ValueError(f"rl stage {stage!r}: critic_base: shared needs reward.init ({params.reward.init}) to be the "
                         f"stage's init ({init}) and reward.method lora")
    config = config_for(params.model.base)
    model = meta_model(config)
    total = sum(p.numel() for p in model.parameters())
    policy = sum(p.numel() for p in get_peft_model(model, lora_config(model, cfg.lora_for(st), "CAUSAL_LM",
                                                                      "rl")).parameters()
                 if p.requires_grad)
    model = meta_model(config)
    critic = sum(p.numel() for p in get_peft_model(model, lora_config(model, params.reward.lora, "CAUSAL_LM",
                                                                      "reward")).parameters() if p.requires_grad)
    critic += config.hidden_size                                        # the score head
    layers, vocab = config.num_hidden_layers, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sequences = st.prompts_per_step * st.num_generations
    seq_tokens = prompt_tokens + st.max_completion_length
    mb_sequences = -(-sequences // st.ppo.mini_batches)
    kept, layer_peak = _activation_bytes(config, mb_sequences * seq_tokens, cfg.gradient_checkpointing)
    gb = 1024 ** 3
    memory = {
        "weights": total * 2 * (1 if shared else 2) / gpus / gb,
        "reward_model": total * 2 / gpus / gb,
        "trainable_state": (policy + critic) * 16 / gpus / gb,
        "kv_cache": sequences * seq_tokens * layers * 2 * config.num_key_value_heads * head_dim * 2 / gpus / gb,
        "activations": (kept / gpus + layer_peak) / gb,
        "logits": mb_sequences * st.max_completion_length * vocab * 4 * 4 / gb,
    }
    memory["total"] = sum(memory.values())
    return PpoPlan(stage, gpus, "shared" if shared else "copy", policy, critic, sequences, seq_tokens,
                   {k: round(v, 2) for k, v in memory.items()})


@dataclass
class PreferencePlan:
    stage: str
    algorithm: str
    gpus: int
    strategy: str
    reference: str                      # adapter-off (no copy), copy (method full), or none (ORPO, SimPO)
    trainable_params: int
    sequences_per_step: int             # per GPU: chosen and rejected of each pair (KTO: each example and its KL pair)
    memory_gb_per_gpu: dict[str, float]

    def as_dict(self) -> dict:
        return asdict(self)


def plan_preference(params, stage: str) -> PreferencePlan:
    """Per-GPU memory of a preference stage (posttrain.training.preference), on the SFT plan's terms
    (`_memory`) for its own parallelism: each step runs the policy over the chosen and the rejected
    response of `batch_size` pairs (KTO: each example and the mismatched completion it estimates
    its KL term from), so twice the sequences of an SFT step of the same batch size. DPO's and KTO's
    reference forward runs without gradients after the policy's, so it adds weights only when it is
    a copy (method full); with LoRA it is the adapter-off policy."""
    from peft import get_peft_model

    from posttrain.training.trainers import lora_config

    cfg = params.preference
    names = [s.name for s in cfg.stages]
    if stage not in names:
        raise ValueError(f"preference stage {stage!r} is not in preference.stages ({names})")
    st = cfg.stages[names.index(stage)]
    config = config_for(params.model.base)
    model = meta_model(config)
    total = sum(p.numel() for p in model.parameters())
    if cfg.method == "full":
        trainable = total
    else:
        model = get_peft_model(model, lora_config(model, cfg.lora_for(st), "CAUSAL_LM", "preference"))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gpus = max(cfg.gpus, 1)
    sequences = cfg.batch_size * 2
    memory = _memory(config, total, trainable, cfg.method, gpus, cfg.strategy, sequences * cfg.max_length,
                     cfg.gradient_checkpointing)
    with_reference = st.algorithm in ("dpo", "kto")
    reference = "copy" if with_reference and cfg.method == "full" else "adapter-off" if with_reference else "none"
    if reference == "copy":
        memory["reference"] = memory["weights"]
        memory["total"] = round(memory["total"] + memory["reference"], 2)
    return PreferencePlan(stage, st.algorithm, gpus, cfg.strategy, reference, trainable, sequences, memory)
