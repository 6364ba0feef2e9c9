"""`resources:` what each rule asks a cluster scheduler for. Not part of any stage's parameters:
changing them reruns nothing."""

from __future__ import annotations

from pydantic import Field

from posttrain.config.base import Section


class JobResources(Section):
    """What one rule asks the scheduler for. Under `snakemake --profile slurm` the SLURM executor
    plugin turns these into sbatch flags; locally only `cpus_per_task` (the rule's threads)
    matters. Unset fields fall back to `resources.default`, then to the profile's
    default-resources."""
    gpu: int | None = Field(None, ge=0, description=(
        "`--gpus=N` (a training stage: its `gpus` when unset)."))
    gpu_model: str | None = Field(None, description="`--gpus=MODEL:N` (e.g. h100).")
    cpus_per_task: int | None = Field(None, ge=1, description="`--cpus-per-task`, and the rule's threads.")
    cpus_per_gpu: int | None = Field(None, ge=1, description="`--cpus-per-gpu` (GPU jobs).")
    mem_mb: int | None = Field(None, ge=1, description="`--mem`, in MB.")
    runtime: int | None = Field(None, ge=1, description="`--time`, in minutes.")
    partition: str | None = Field(None, description="`--partition`.")
    account: str | None = Field(None, description="`--account`.")
    extra: str | None = Field(None, description="Any other sbatch flags, verbatim.")
    nodes: int | None = Field(None, ge=1, description=(
        "Training stages across nodes: `gpu` is then GPUs per node; the rule runs one accelerate launcher per node "
        "through srun (the plugin's `mpi: srun` pattern)."))


class ResourcesParams(Section):
    """Every rule's resources: `default`, then the entry for its stage kind, then the entry for its
    exact rule name, each overriding the fields it sets. Not part of any stage's parameters:
    changing them reruns nothing."""
    default: JobResources = Field(default_factory=JobResources, description="What every rule asks for.")
    stages: dict[str, JobResources] = Field(default_factory=dict, description=(
        "Overrides by stage kind (sft, reward, rl, distill, distill_samples, student_base, evaluate, export_merge, "
        "export_gptq, prepare_data, demo_data, base_model, report, export_check), then by exact rule name "
        "(rl_reasoning, evaluate_sft), each overriding the fields it sets."))
    signal_seconds: int | None = Field(300, ge=10, description=(
        "Training jobs ask SLURM for SIGUSR1 this many seconds before their time limit; the trainer then saves a "
        "checkpoint and exits, and Snakemake's retry resumes from it. null: no signal."))
