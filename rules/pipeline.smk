# One rule per row of the stage table. The shell command is exactly dvc.yaml's `cmd`.
# Values are bound through `params:` because a `shell:` expression in a loop is evaluated late,
# after the loop variable has moved on.

for _stage in STAGES:

    rule:
        name:
            _stage.name
        input:
            _stage.inputs,
        output:
            [directory(o) for o in _stage.outs],
        threads: _stage.rule_threads(workflow.cores)
        priority: _stage.priority
        # wall time, peak memory and CPU time per rule (benchmarks/stage_costs.py gathers them)
        benchmark:
            f"logs/benchmarks/{_stage.name}.tsv"
        # From params' resources section: what `--profile slurm` asks sbatch for.
        resources:
            **_stage.resources,
        params:
            cmd=_stage.cmd,
            # The parameter sections the stage reads: editing one reruns it (params trigger).
            sections=section_json(_stage),
        shell:
            "{params.cmd}"
