"""What each stage's rule asks of the machine or the cluster: Snakemake resources (SLURM), and
the launcher of multi-GPU and multi-node stages."""

from __future__ import annotations

from posttrain.config import Params
from posttrain.dag.code import KINDS
from posttrain.dag.stage import Stage

TRAINING_GPUS = {"sft": "sft", "reward": "reward", "rl": "rl", "preference": "preference", "distill": "distill"}
# A JobResources field -> the resource name the SLURM executor plugin reads.
SLURM_NAMES = {"partition": "slurm_partition", "account": "slurm_account", "extra": "slurm_extra"}


def stage_resources(params: Params, s: Stage) -> dict:
    """The Snakemake resources of a stage's rule: resources.default, then its kind's entry, then
    its own; a training stage asks for its section's GPUs unless told otherwise."""
    cfg = params.resources
    merged: dict = {}
    for entry in (cfg.default, cfg.stages.get(s.kind), cfg.stages.get(s.name)):
        if entry is not None:
            merged.update(entry.model_dump(exclude_none=True))
    section = TRAINING_GPUS.get(s.kind)
    gpus = getattr(params, section).gpus if section and getattr(params, section, None) is not None else 0
    if gpus and "gpu" not in merged:
        merged["gpu"] = gpus
    if gpus > 1 and merged["gpu"] < gpus:
        raise ValueError(f"{section}.gpus is {gpus} but the resources give rule {s.name} {merged['gpu']} GPU(s); "
                         f"raise resources.stages.{s.kind}.gpu or remove it")
    if not merged.get("gpu"):
        merged.pop("gpu", None)
        if merged.get("gpu_model"):
            raise ValueError(f"the resources of rule {s.name} name gpu_model {merged['gpu_model']!r} but no GPUs: "
                             f"set resources.stages.{s.kind}.gpu")
    elif merged.get("cpus_per_gpu"):
        merged.pop("cpus_per_task", None)   # the plugin would let it win over cpus_per_gpu
    extra = [merged.get("extra")]
    if section and cfg.signal_seconds:
        extra.append(f"--signal=USR1@{cfg.signal_seconds}")
    if merged.get("nodes", 1) > 1:
        # The plugin's multi-node pattern: the command starts its own tasks (srun, one per node),
        # GPUs are per node, and CPUs per task (one task per node).
        if not merged.get("gpu"):
            raise ValueError(f"rule {s.name} spans {merged['nodes']} nodes but asks for no GPUs; set "
                             f"resources.stages.{s.kind}.gpu (GPUs per node) or the stage's gpus")
        gpus, model = merged.pop("gpu"), merged.pop("gpu_model", None)
        extra.append(f"--gpus-per-node={model + ':' if model else ''}{gpus}")
        if merged.get("cpus_per_gpu"):
            merged["cpus_per_task"] = merged.pop("cpus_per_gpu") * gpus
        merged |= {"mpi": "srun", "tasks": merged["nodes"], "gpus_per_node": gpus}
    merged["extra"] = " ".join(filter(None, extra))
    if not merged["extra"]:
        merged.pop("extra")
    return {SLURM_NAMES.get(k, k): v for k, v in merged.items()}


def multi_node_launcher(params: Params, s: Stage) -> str:
    """`srun` starts one accelerate launcher per node (scripts/srun-accelerate)."""
    section = TRAINING_GPUS.get(s.kind)
    cfg = getattr(params, section) if section else None
    entry = params.rl.zero if s.name == "rl_zero" else next((st for st in params.rl.stages
                                                             if f"rl_{st.name}" == s.name),
                                                           None)
    if cfg is None or (entry is not None and entry.algorithm == "ppo"):
        raise ValueError(f"resources.stages.{s.kind}.nodes: rule {s.name} runs in one process (only SFT, reward "
                         f"models, GRPO, preference stages and distillation train across nodes); remove nodes")
    return (f"srun --ntasks-per-node=1 scripts/srun-accelerate {accelerate_config(cfg.strategy)} "
            f"{s.resources['gpus_per_node']}")


def check_resource_keys(params: Params, table: list[Stage]) -> None:
    unknown = sorted(set(params.resources.stages) - set(KINDS) - {s.name for s in table})
    if unknown:
        raise ValueError(f"resources.stages {unknown} name no stage kind or rule of this DAG; kinds: "
                         f"{sorted(KINDS)}; rules: {sorted(s.name for s in table)}")


def accelerate_launcher(gpus: int, strategy: str) -> str:
    """Multi-GPU stages run under accelerate with the strategy's config from configs/accelerate/."""
    if gpus <= 1:
        return ""
    return f"accelerate launch --config_file {accelerate_config(strategy)} --num_processes {gpus}"


def accelerate_config(strategy: str) -> str:
    """The accelerate config file of a sharding strategy (`none` replicates, as ddp does)."""
    name = {"fsdp": "fsdp", "zero3": "zero3", "ddp": "ddp", "none": "ddp"}[strategy]
    return f"configs/accelerate/{name}.yaml"
