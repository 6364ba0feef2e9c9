"""A stage of the DAG: one row of the table that Snakemake's rules and dvc.yaml are both made from."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.config import DEFAULT_PARAMS

RESULTS = Path("results")
# GPTQModel's environment (envs/export.txt; `make setup` builds it): its pins conflict with
# Snakemake's, so the rules that load GPTQ models run posttrain from there.
EXPORT_ENV = ".venv-export"

ALL_CORES, HALF_THE_CORES = 1.0, 0.5   # Stage.cores_share
GATES_EVALUATIONS = 10   # Stage.priority of the stages every evaluation but one waits for
# Stage.priority of the stages one evaluation waits for (the exports, the plain-SFT student): ahead
# of the evaluations nothing waits on, so the last jobs are evaluations side by side rather than the
# GPTQ export and its evaluation alone on one core, the other idle (seen in a demo run's job log;
# figures in benchmarks/RESULTS.md, "The demo under 20 minutes").
GATES_AN_EVALUATION = 5
# Stage.priority of the RL stages and the distillation chain after them (the student's layers,
# the teacher's samples, the distillation): the demo's longest chain of dependent stages
# (`benchmarks/stage_costs.py --params` prints it). Among ready jobs of one priority Snakemake's
# scheduler only fills the cores, in no particular order; it once put the teacher's sampling last,
# and the demo took longer (figures in benchmarks/RESULTS.md, "Cores per stage and the longest
# chain first"); with the RL stages below the evaluations, a two-core RL stage waited for a lone
# evaluation while the other core idled ("The safety stage retuned, 2026-12-07").
LONGEST_CHAIN = 20


@dataclass
class Stage:
    name: str                      # rule / stage name (an identifier)
    args: list[str]                # the posttrain subcommand and its arguments
    deps: list[str]                # files or folders read
    outs: list[str]                # folders written (declared whole)
    params: list[str]              # params.yaml sections the stage reads
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    # Parameter files (params.yaml + the overlays that set a section in `params`), appended to
    # the command when not the default.
    param_files: list[str] = field(default_factory=list)
    # The stage's own code, as extra inputs: editing it reruns the stage in both tools.
    code: list[str] = field(default_factory=list)
    # Multi-GPU prefix (e.g. `accelerate launch --config_file ...`); the stage then runs as a module.
    launcher: str = ""
    # A virtual environment whose posttrain runs the stage (relative to the working directory);
    # empty: the one Snakemake and DVC run in.
    env: str = ""
    # The share of Snakemake's cores the rule takes (at least one thread; 0: one). Snakemake sets
    # OMP_NUM_THREADS to a rule's threads, 1 by default. The SFT and RL stages take every core:
    # everything after them waits. Training that other work runs beside takes half: a second
    # thread makes it well short of twice as fast on two cores, so two such jobs side by side finish
    # sooner than one after the other (measured on demo runs by benchmarks/stage_costs.py; figures in
    # benchmarks/RESULTS.md, "Threads" and "Cores per stage and the longest chain first").
    cores_share: float = 0.0
    # The stage kind (a CODE key: sft, rl, evaluate, ...) and the Snakemake resources of its rule.
    kind: str = ""
    resources: dict = field(default_factory=dict)
    # Snakemake runs ready jobs of higher priority first: the reward models and the reference
    # evaluation gate every other evaluation, so they go before work that nothing waits on yet.
    priority: int = 0

    @property
    def threads(self) -> int | None:
        """The rule's threads when params fix its CPUs (cpus_per_task, or cpus_per_gpu x gpu);
        None: the default."""
        r = self.resources
        return r.get("cpus_per_task") or (r["cpus_per_gpu"] * r["gpu"] if r.get("cpus_per_gpu") and r.get("gpu")
                                          else None)

    def rule_threads(self, cores: int) -> int:
        """The threads of the stage's rule when Snakemake runs with `cores` cores."""
        return self.threads or max(1, int(cores * self.cores_share))

    @property
    def inputs(self) -> list[str]:
        return [*self.deps, *self.code]

    @property
    def cmd(self) -> str:
        extra = []
        if self.param_files and self.param_files != [str(DEFAULT_PARAMS)]:
            for f in self.param_files:
                extra += ["--params", f]
        if self.launcher:
            return f"{self.launcher} -m posttrain.cli {shlex.join([*self.args, *extra])}"
        program = f"{self.env}/bin/posttrain" if self.env else "posttrain"
        return shlex.join([program, *self.args, *extra])
