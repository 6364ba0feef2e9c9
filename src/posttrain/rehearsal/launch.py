"""What a CPU cannot launch, checked in-process: each multi-GPU stage's accelerate config against
the training arguments that stage builds under it.

On a CPU, `accelerate launch` with an FSDP or DeepSpeed config starts the processes, but accelerate
(1.15) enables FSDP and DeepSpeed only on GPU backends: the ranks train as plain data parallel over
gloo, and the checks transformers' Trainer makes when the plugin is on never run. So the rehearsal
reads each config the way `accelerate launch` does (its own parser, the environment it gives each
process), builds the plugin from that environment, builds the stage's TrainingArguments with the
same function the stage uses, and applies the Trainer's start-up checks for that plugin."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from posttrain import dag
from posttrain.config import Params

# Stage kinds that train under a launcher, each configured by its own params section of that name.
TRAINING_KINDS = ("sft", "reward", "rl", "distill")


@contextmanager
def launcher_environment(config: Path, processes: int = 2):
    """os.environ as `accelerate launch --config_file CONFIG` sets it in each process, put back after."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "--num_processes", str(processes),
                                               "train.py"])
    args, *_ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield env
    finally:
        os.environ.clear()
        os.environ.update(saved)


def problems(params: Params, root: Path) -> list[str]:
    """Each multi-GPU rule whose launcher config and training arguments transformers would refuse."""
    found = []
    for s in dag.stages(params, ["params.yaml"]):
        if not s.launcher or s.kind not in TRAINING_KINDS or "--config_file" not in s.launcher:
            continue
        config = root / s.launcher.split("--config_file ")[1].split()[0]
        cfg = getattr(params, s.kind)
        if cfg.strategy == "fsdp":
            found += [f"{s.name}: {p}" for p in _fsdp_problems(config, cfg)]
    return found


def _fsdp_problems(config: Path, cfg) -> list[str]:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import TrainingArguments

    from posttrain.training import trainers

    with launcher_environment(config), tempfile.TemporaryDirectory() as tmp:
        plugin = FullyShardedDataParallelPlugin()                 # from the launcher's environment
        args = TrainingArguments(**trainers.training_kwargs(cfg, {"bf16": False, "fp16": False}, Path(tmp)))
    out = []
    # transformers' Trainer.__init__, once the FSDP plugin is on:
    if plugin.activation_checkpointing and args.activation_checkpointing:
        out.append(f"{config.name} checkpoints activations (fsdp_activation_checkpointing) and the stage's training "
                   f"arguments ask for activation_checkpointing too: transformers' Trainer refuses both at start-up")
    if args.save_only_model and args.load_best_model_at_end:
        out.append("FSDP cannot save_only_model with load_best_model_at_end (transformers' Trainer refuses it)")
    return out
