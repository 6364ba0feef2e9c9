"""What each stage of a recipe will cost on its GPUs, estimated on the CPU: memory per GPU from
`training.sizing` (the architecture built on the meta device) and GPU-hours from token counts.

GPU-hours = tokens x FLOPs per token / (peak FLOP/s x MFU), with FLOPs per token 6 x the active
parameters for a trained token and 2 x for a token only run forward (sampled, scored, a frozen
reference or teacher). Peak and MFU are assumptions, printed in the report: real utilisation
depends on kernels, sequence lengths and communication, which no CPU run measures."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from posttrain.config import Params

log = logging.getLogger("posttrain")

PEAK_FLOPS = 989e12        # H100 SXM, dense bf16
MFU = 0.25                 # assumed model FLOPs utilisation (MoE routing and generation keep it low)
ASSUMPTIONS = (f"GPU-hours = tokens x FLOPs/token / ({PEAK_FLOPS / 1e12:.0f} TFLOP/s x MFU {MFU}); FLOPs/token = 6 x "
               "active parameters trained, 2 x run forward (sampling, scoring, reference, teacher); tokens from "
               "the recipe's steps, batch sizes and lengths, or from the full datasets' rows x the fixtures' mean "
               "characters per row / 4 (characters per token) where a stage trains for epochs")
CHARS_PER_TOKEN = 4


@dataclass
class Cost:
    memory_gb: float | None = None     # per GPU
    gpu_hours: float | None = None
    note: str = ""


def active_params(model: str) -> int | None:
    """Parameters used per token by a hub model whose config is known offline (sizing.KNOWN_CONFIGS)."""
    from posttrain.training.sizing import KNOWN_CONFIGS, _active_params, config_for, meta_model

    if model not in KNOWN_CONFIGS:
        return None
    config = config_for(model)
    return _active_params(meta_model(config), config)


def hours(tokens: float, flops_per_token: float) -> float:
    return tokens * flops_per_token / (PEAK_FLOPS * MFU) / 3600


def sft_memory(params: Params, section: str) -> float | None:
    """Per-GPU memory of a training section by the SFT plan (reward: no logits; 2 sequences per pair)."""
    from posttrain.training.sizing import KNOWN_CONFIGS, plan_sft

    if params.model.base not in KNOWN_CONFIGS:
        return None
    p = copy.deepcopy(params)
    cfg = getattr(p, section)
    p.sft = p.sft.model_copy(update={k: getattr(cfg, k) for k in ("method", "lora", "batch_size", "max_length",
                                                                    "gradient_checkpointing") if hasattr(cfg, k)})
    seqs = 2 if section == "reward" else 1
    plan = plan_sft(p, gpus=max(cfg.gpus, 1), strategy=cfg.strategy,
                    micro_batch_tokens=cfg.batch_size * seqs * cfg.max_length)
    mem = plan.memory_gb_per_gpu
    return round(mem["total"] - (mem["logits"] if section == "reward" else 0.0), 1)


def stage_costs(params: Params, stages: list, rows: dict[str, float | None], chars: dict[str, float],
                ) -> dict[str, Cost]:
    """Cost per rule. `rows`: rows of the full data each rule reads (preflight.full_rows);
    `chars`: mean characters per row per data kind, measured on the rehearsal's prepared rows."""
    n = active_params(params.model.base)
    if n is None:
        return {s.name: Cost(note="model config not known offline") for s in stages}
    out: dict[str, Cost] = {}
    tokens_per_row = {k: v / CHARS_PER_TOKEN for k, v in chars.items()}
    rl = {f"rl_{st.name}": st for st in params.rl.stages}
    if params.rl.zero is not None:
        rl["rl_zero"] = params.rl.zero
    for s in stages:
        if s.kind == "sft":
            out[s.name] = Cost(sft_memory(params, "sft"),
                               _epochs_hours(params.sft, rows.get("sft"), tokens_per_row.get("sft"), 6 * n))
        elif s.kind == "reward":
            out[s.name] = Cost(sft_memory(params, "reward"), _epochs_hours(
                params.reward, rows.get(s.name), 2 * tokens_per_row.get("preference", 0), 6 * n))
        elif s.name in rl:
            out[s.name] = _rl_cost(params, rl[s.name], n, tokens_per_row.get("prompts", 0))
        elif s.kind == "preference":
            out[s.name] = _preference_cost(params, s.name.removeprefix("preference_"), n)
        elif s.kind == "evaluate":
            tokens = (rows.get("prepare_data_eval") or 0) * (params.evaluate.max_new_tokens +
                                                             tokens_per_row.get("eval", 0))
            out[s.name] = Cost(None, hours(tokens, 2 * n), "generation only")
        elif s.kind == "distill_samples":
            smp = params.distill.sampling
            tokens = (rows.get(s.name) or 0) * smp.per_prompt * smp.max_new_tokens
            out[s.name] = Cost(None, hours(tokens, 2 * n), "every prompt of the sampled subsets (upper bound)")
        elif s.kind == "distill":
            student = active_params(params.distill.student.model) or n
            teacher = 2 * n if params.distill.level == "logit" and s.name == "distill" else 0
            out[s.name] = Cost(None, _epochs_hours(params.distill, rows.get("sft"), tokens_per_row.get("sft"),
                                                   6 * student + teacher))
    return out


def _epochs_hours(cfg, rows: float | None, tokens_per_row: float | None, flops_per_token: float) -> float | None:
    if cfg.max_steps > 0:
        tokens = cfg.max_steps * cfg.batch_size * cfg.grad_accum * max(cfg.gpus, 1) * cfg.max_length
    elif rows and tokens_per_row:
        tokens = rows * min(tokens_per_row, cfg.max_length) * cfg.epochs
    else:
        return None
    return hours(tokens, flops_per_token)


def _preference_cost(params: Params, stage: str, n: int) -> Cost:
    """posttrain plan's memory; a step trains on the chosen and the rejected sequence of each pair,
    and DPO and KTO run a reference forward pass besides."""
    from posttrain.training.sizing import KNOWN_CONFIGS, plan_preference

    cfg = params.preference
    st = next(st for st in cfg.stages if st.name == stage)
    memory = (round(plan_preference(params, stage).memory_gb_per_gpu["total"], 1)
              if params.model.base in KNOWN_CONFIGS else None)
    flops = 2 * (6 * n + (2 * n if st.algorithm in ("dpo", "kto") else 0))
    return Cost(memory, _epochs_hours(cfg.model_copy(update={"max_steps": st.max_steps}), None, None, flops))


def _rl_cost(params: Params, st, n: int, prompt_tokens: float) -> Cost:
    seqs = st.max_steps * st.prompts_per_step * st.num_generations
    tokens = seqs * (prompt_tokens + st.max_completion_length)
    forward = 2 + (2 if st.beta > 0 else 0) + 2 * sum(1 for r in st.rewards if r.name == "reward_model")
    trained = 6 * (st.ppo.epochs * 2 if st.algorithm == "ppo" else 1)      # PPO: policy and critic each epoch
    memory = None
    if st.algorithm == "ppo":
        from posttrain.training.sizing import plan_ppo

        try:
            memory = round(plan_ppo(params, st.name, gpus=max(params.rl.gpus, 1)).memory_gb_per_gpu["total"], 1)
        except ValueError:         # the RL-first stage is not in rl.stages
            memory = None
    return Cost(memory, hours(tokens, (forward + trained) * n),
                f"{seqs} sequences of <= {prompt_tokens:.0f} + {st.max_completion_length} tokens")
