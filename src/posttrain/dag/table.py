"""The DAG, declared once.

`stages(params, param_files)` is the single table of stages: name, command, inputs, outputs,
parameter sections, metrics and plots. The Snakefile turns each row into a rule; `posttrain dag`
writes the same rows as `dvc.yaml`. Both therefore run identical commands on identical paths, and
tests/workflow/test_dag.py checks the two tools' views of the graph against each other.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.config import DATA_KINDS, DEFAULT_PARAMS, Params, read_yaml
from posttrain.dag.checks import check_recipe
from posttrain.dag.code import code_inputs
from posttrain.dag.resources import accelerate_launcher, check_resource_keys, multi_node_launcher, stage_resources
from posttrain.dag.stage import (
    ALL_CORES,
    EXPORT_ENV,
    GATES_AN_EVALUATION,
    GATES_EVALUATIONS,
    HALF_THE_CORES,
    LONGEST_CHAIN,
    RESULTS,
    Stage,
)


def stages(params: Params, param_files: list[str] | None = None) -> list[Stage]:
    param_files = [str(f) for f in (param_files or [DEFAULT_PARAMS])]
    table: list[Stage] = []
    base = str(RESULTS / "base")
    demo = str(RESULTS / "demo_data")

    sources = {kind: [s.path for s in params.data.sources.of(kind)] for kind in DATA_KINDS}
    if any(p.startswith(demo + "/") for paths in sources.values() for p in paths):
        table.append(Stage("demo_data", ["demo-data", "--out", demo], [], [demo], ["demo_data"]))

    base_deps = [params.model.base] if Path(params.model.base).exists() else []
    table.append(Stage("base_model", ["base-model", "--out", base], base_deps, [base], ["model"]))

    produced = [s.outs[0] for s in table]
    eval_dir = str(RESULTS / "data" / "eval")
    # eval first: every training kind is decontaminated against it.
    for kind in ("eval", "sft", "preference", "prompts"):
        if not sources[kind]:
            continue
        out = str(RESULTS / "data" / kind)
        args = ["prepare-data", "--kind", kind]
        for p in sources[kind]:
            args += ["--input", p]
        args += ["--tokenizer", base]
        deps = _deps_of(sources[kind], produced) + [base]
        if kind != "eval" and sources["eval"]:
            args += ["--eval", f"{eval_dir}/test.jsonl"]
            deps.append(eval_dir)
        args += ["--out", out]
        table.append(Stage(f"prepare_data_{kind}", args, deps, [out], ["data"], metrics=[f"{out}/report.json"]))
        produced.append(out)

    if sources["sft"]:
        sft = str(RESULTS / "sft")
        table.append(Stage("sft", ["sft", "--base", base, "--data", str(RESULTS / "data" / "sft"), "--out", sft],
                           [base, str(RESULTS / "data" / "sft")], [sft], ["sft"],
                           metrics=[f"{sft}/metrics.json"],
                           plots=[{f"{sft}/log.csv": {"x": "step", "y": ["train_loss", "val_loss"]}}],
                           launcher=accelerate_launcher(params.sft.gpus, params.sft.strategy), cores_share=ALL_CORES))

    if sources["preference"]:
        table += _reward_models(params, table)

    if sources["prompts"]:
        table += _rl(params, table)

    if params.preference.stages:
        table += _preference(params, table, sources)

    if params.distill is not None:
        table += _distill(params, table, sources)

    exported = _export(params, table, sources) if params.export is not None else None
    if exported:
        table += exported

    if sources["eval"]:
        check = [_export_check(exported)] if exported else []
        *evaluations, report = _evaluation(params, table, sources, [c.outs[0] for c in check])
        table += [*evaluations, *check, report]   # in dependency order: the report reads the check

    check_resource_keys(params, table)
    check_recipe(params)
    overlay_sections = {f: set(read_yaml(Path(f))) for f in param_files[1:]}
    for s in table:
        # The first file, then each overlay that sets a section the stage reads: an overlay leaves
        # the commands of the other stages as they were, so switching overlays (the quick demo,
        # the RL stages) reruns only the stages it changes, in Snakemake and in DVC alike.
        s.param_files = [param_files[0], *(f for f in param_files[1:] if overlay_sections[f] & set(s.params))]
        s.kind = next((k for k in ("prepare_data", "evaluate", "reward", "rl", "preference", "distill_samples",
                                  "distill")
                       if s.name.startswith(k)), s.name)
        s.code = code_inputs(s.kind)
        s.resources = stage_resources(params, s)
        if s.resources.get("nodes", 1) > 1:
            s.launcher = multi_node_launcher(params, s)
    return table


# Stage kinds that train, with the params section whose `gpus` they run on; SLURM warns them


def _reward_models(params: Params, table: list[Stage]) -> list[Stage]:
    """A reward-model stage per aspect in params (reward.aspects), each from the init model."""
    init = str(RESULTS / "sft") if params.reward.init == "sft" and any(s.name == "sft" for s in table) \
        else str(RESULTS / "base")
    data = str(RESULTS / "data" / "preference")
    out = []
    for aspect in params.reward.aspects:
        folder = str(RESULTS / "reward" / aspect)
        out.append(Stage(f"reward_{aspect}", ["reward", "--aspect", aspect, "--init", init, "--data", data,
                                              "--out", folder],
                         [init, data], [folder], ["reward"], metrics=[f"{folder}/metrics.json"],
                         plots=[{f"{folder}/log.csv": {"x": "step", "y": ["train_accuracy", "val_accuracy"]}}],
                         launcher=accelerate_launcher(params.reward.gpus, params.reward.strategy),
                         cores_share=HALF_THE_CORES,
                         priority=GATES_EVALUATIONS))
    return out


def _rl(params: Params, table: list[Stage]) -> list[Stage]:
    """A stage per entry of rl.stages, in order (each from the previous one by default), and the
    RL-first stage from the base when rl.zero is set."""
    names = {s.name for s in table}
    rms = {s.name.removeprefix("reward_"): s.outs[0] for s in table if s.name.startswith("reward_")}
    prompts = str(RESULTS / "data" / "prompts")
    models = {"base": str(RESULTS / "base"), **({"sft": str(RESULTS / "sft")} if "sft" in names else {})}
    previous = models.get("sft", models["base"])
    out: list[Stage] = []
    entries = [(st, str(RESULTS / "rl" / st.name)) for st in params.rl.stages]
    if params.rl.zero is not None:
        entries.append((params.rl.zero, str(RESULTS / "rl_zero")))
    for st, folder in entries:
        is_zero = folder.endswith("rl_zero")
        init = models["base"] if is_zero else {"previous": previous, **models}.get(
            st.init, str(RESULTS / "rl" / st.init))
        if st.init == "sft" and "sft" not in models:
            raise ValueError(f"rl stage {st.name!r} starts from sft, but the DAG has no sft stage")
        # reward models the stage reads: its reward terms', and a PPO critic's starting point
        aspects = sorted({r.aspect for r in st.rewards if r.aspect} | ({st.ppo.critic} if st.ppo.critic else set()))
        missing = [a for a in aspects if a not in rms]
        if missing:
            raise ValueError(f"rl stage {st.name!r} uses reward model(s) {missing}, but reward.aspects defines "
                             f"{sorted(rms) or 'none'}")
        args = ["rl", "--stage", "zero" if is_zero else st.name, "--init", init, "--prompts", prompts]
        for a in aspects:
            args += ["--reward", f"{a}={rms[a]}"]
        out.append(Stage("rl_zero" if is_zero else f"rl_{st.name}", [*args, "--out", folder],
                         [init, prompts, *[rms[a] for a in aspects]], [folder], ["rl"],
                         metrics=[f"{folder}/metrics.json"],
                         plots=[{f"{folder}/log.csv": {"x": "step", "y": ["reward", "heldout_reward", *(
                             PPO_PLOTS if st.algorithm == "ppo" else [])]}}],
                         # PPO is one process whose model spans the node's GPUs (device map)
                         launcher=accelerate_launcher(1 if st.algorithm == "ppo" else params.rl.gpus,
                                                      params.rl.strategy),
                         # the RL chain leads to distillation and the exports: the demo's longest
                         # chain; the RL-first path gates one evaluation
                         cores_share=ALL_CORES, priority=GATES_AN_EVALUATION if is_zero else LONGEST_CHAIN))
        if not is_zero:
            previous = folder
    return out


def _preference(params: Params, table: list[Stage], sources: dict) -> list[Stage]:
    """A stage per entry of preference.stages, each from its init model (sft by default), on the
    prepared preference pairs."""
    if not sources["preference"]:
        raise ValueError("preference.stages train on preference pairs: set data.sources.preference")
    data = str(RESULTS / "data" / "preference")
    out = []
    for st in params.preference.stages:
        if st.name in _model_folders(table):
            raise ValueError(f"preference stage {st.name!r}: another model of the DAG has that name (an RL stage?); "
                             f"rename one")
        init = _model_folder(st.init, table, f"preference stage {st.name!r}: init")[1]
        folder = str(RESULTS / "preference" / st.name)
        out.append(Stage(f"preference_{st.name}", ["preference", "--stage", st.name, "--init", init, "--data", data,
                                                   "--out", folder],
                         [init, data], [folder], ["preference"], metrics=[f"{folder}/metrics.json"],
                         plots=[{f"{folder}/log.csv": {"x": "step", "y": ["train_loss", "val_loss", "val_margin"]}}],
                         launcher=accelerate_launcher(params.preference.gpus, params.preference.strategy),
                         cores_share=ALL_CORES, priority=GATES_AN_EVALUATION))
    return out


DISTILL = RESULTS / "distill"
BENCHMARKS = "logs/benchmarks"    # rules/pipeline.smk's benchmark files
# The evaluated distillation models: report name -> folder.
STUDENTS = {"student_sft": str(DISTILL / "student_sft"), "distilled": str(DISTILL / "student")}


def _distill(params: Params, table: list[Stage], sources: dict) -> list[Stage]:
    """The student before training, the teacher's verified answers (rejection sampling), the
    distilled student, and the same student trained by plain SFT (the baseline)."""
    cfg = params.distill
    if not sources["sft"] or not sources["prompts"]:
        raise ValueError("distillation trains on the SFT data and samples the teacher on the prompts: set "
                         "data.sources.sft and data.sources.prompts, or distill: null")
    teacher = _model_folder(cfg.teacher, table, "distill.teacher")[1]
    base, sft_data, prompts = str(RESULTS / "base"), str(RESULTS / "data" / "sft"), str(RESULTS / "data" / "prompts")
    student_base, samples = str(DISTILL / "student_base"), str(DISTILL / "samples")
    launcher = accelerate_launcher(cfg.gpus, cfg.strategy)

    def trained(name: str, args: list[str], deps: list[str], out: str, priority: int = 0) -> Stage:
        return Stage(name, [*args, "--out", out], deps, [out], ["distill"], metrics=[f"{out}/metrics.json"],
                     plots=[{f"{out}/log.csv": {"x": "step", "y": ["train_loss", "val_loss"]}}], launcher=launcher,
                     cores_share=HALF_THE_CORES, priority=priority)

    logit = ["--teacher", teacher] if cfg.level == "logit" else []
    pruned = cfg.student.model == "prune"
    calibration = ["--calibration", sft_data] if pruned and cfg.student.drop_least_important else []
    from_teacher = ["--teacher", teacher] if pruned and cfg.student.prune_from == "teacher" else []
    return [
        Stage("student_base", ["student-base", "--base", base, *calibration, *from_teacher, "--out", student_base],
              [base, *calibration[1:], *from_teacher[1:]], [student_base], ["distill", "model"],
              priority=LONGEST_CHAIN),
        # generation-bound, like the evaluations: GENERATION_THREADS cores (see _evaluation)
        Stage("distill_samples", ["distill-samples", "--teacher", teacher, "--prompts", prompts, "--out", samples],
              [teacher, prompts], [samples], ["distill"], metrics=[f"{samples}/metrics.json"], priority=LONGEST_CHAIN),
        trained("distill_baseline", ["distill", "--baseline", "--student", student_base, "--data", sft_data],
                [student_base, sft_data], STUDENTS["student_sft"], priority=GATES_AN_EVALUATION),
        trained("distill", ["distill", "--student", student_base, "--data", sft_data, "--samples", samples, *logit],
                [student_base, sft_data, samples, *logit[1:]], STUDENTS["distilled"], priority=LONGEST_CHAIN),
    ]


def _model_folders(table: list[Stage]) -> dict[str, str]:
    """Every model the DAG makes so far, by its report name."""
    return {"base": str(RESULTS / "base"), **{s.name: s.outs[0] for s in table if s.name == "sft"},
            **{s.name.removeprefix("rl_") if s.name != "rl_zero" else s.name: s.outs[0]
               for s in table if s.name.startswith("rl_")},
            **{s.name.removeprefix("preference_"): s.outs[0] for s in table if s.name.startswith("preference_")},
            **{name: folder for name, folder in STUDENTS.items() if any(folder in s.outs for s in table)}}


def _model_folder(name: str, table: list[Stage], key: str) -> tuple[str, str]:
    """(name, folder) of a model of the DAG: `last` is the last RL stage (sft, then base, when
    there are none)."""
    models = _model_folders(table)
    if name == "last":
        stages = [s for s in table if s.name.startswith("rl_") and s.name != "rl_zero"]
        name = stages[-1].name.removeprefix("rl_") if stages else "sft" if "sft" in models else "base"
    if name not in models:
        raise ValueError(f"{key} {name!r} is not a model of this DAG; choose last or one of {sorted(models)}")
    return name, models[name]


EXPORT = RESULTS / "export"


def _export(params: Params, table: list[Stage], sources: dict) -> list[Stage]:
    """The chosen model merged for serving, and each quantized format made from the merge (in
    the export environment)."""
    cfg = params.export
    name, folder = _model_folder(cfg.model, table, "export.model")
    merged = str(EXPORT / name / "merged")
    out = [Stage("export_merge", ["export-merge", "--model", folder, "--out", merged], [folder], [merged],
                 ["export"], metrics=[f"{merged}/metrics.json"], priority=GATES_AN_EVALUATION)]
    for method in ("gptq", "awq"):                 # GPTQModel's calibrated 4-bit quantizers
        if method not in cfg.formats:
            continue
        if not sources["sft"]:
            raise ValueError(f"export.formats {method} calibrates on the SFT data: set data.sources.sft, or drop "
                             f"{method}")
        sft_data, quantized = str(RESULTS / "data" / "sft"), str(EXPORT / name / method)
        out.append(Stage(f"export_{method}", [f"export-{method}", "--model", merged, "--calibration", sft_data,
                                              "--out", quantized],
                         [merged, sft_data], [quantized], ["export"], metrics=[f"{quantized}/metrics.json"],
                         env=EXPORT_ENV, cores_share=HALF_THE_CORES, priority=GATES_AN_EVALUATION))
    if "gguf" in cfg.formats:
        gguf = str(EXPORT / name / "gguf")
        out.append(Stage("export_gguf", ["export-gguf", "--model", merged, "--out", gguf], [merged], [gguf], ["export"],
                         metrics=[f"{gguf}/metrics.json"], priority=GATES_AN_EVALUATION))
    if "gguf_lora" in cfg.formats:
        if name == "base":
            raise ValueError("export.formats gguf_lora serves a model's LoRA adapter beside its base; the base model "
                             "has none: drop gguf_lora or export a trained model")
        pair = str(EXPORT / name / "gguf_lora")
        out.append(Stage("export_gguf_lora", ["export-gguf-lora", "--model", folder, "--merged", merged, "--out", pair],
                         [folder, merged], [pair], ["export"], metrics=[f"{pair}/metrics.json"],
                         priority=GATES_AN_EVALUATION))
    return out


def _export_stages(table: list[Stage]) -> dict[str, Stage]:
    """The stages that make quantized exports, by the report name of their model (<model>_<format>)."""
    return {f"{Path(s.outs[0]).parent.name}_{s.name.removeprefix('export_')}": s
            for s in table if s.name.startswith("export_") and s.name != "export_merge"}


def _exported_models(table: list[Stage]) -> dict[str, str]:
    """Quantized exports to evaluate, by report name (<model>_<format>)."""
    return {name: s.outs[0] for name, s in _export_stages(table).items()}


def _export_check(exported: list[Stage]) -> Stage:
    """Size ratios and evaluation deltas of the quantized exports against the unquantized model."""
    merge = exported[0]
    name = Path(merge.outs[0]).parent.name
    source_eval = str(RESULTS / "eval" / name)
    out = str(EXPORT / name / "check")
    args = ["export-check", "--merged", merge.outs[0], "--eval", source_eval]
    deps = [merge.outs[0], source_eval]
    for s in exported[1:]:
        fmt = s.name.removeprefix("export_")
        evaluated = str(RESULTS / "eval" / f"{name}_{fmt}")
        args += ["--quantized", f"{fmt}={s.outs[0]}", "--quantized-eval", f"{fmt}={evaluated}"]
        deps += [s.outs[0], evaluated]
    return Stage("export_check", [*args, "--out", out], deps, [out], ["export"], metrics=[f"{out}/metrics.json"])


def _evaluation(params: Params, table: list[Stage], sources: dict, export_checks: list[str]) -> list[Stage]:
    """An evaluate stage per model the DAG makes, and the report over all of them. With reward
    models, every evaluation is scored by them and compared with the reference model's, so the
    reference is evaluated first."""
    eval_data = str(RESULTS / "data" / "eval")
    heldout = str(RESULTS / "data" / "sft") if sources["sft"] else None
    models = _model_folders(table)
    quantized = _exported_models(table)
    models |= quantized
    # An export is evaluated in the environment that made it: GPTQ/AWQ models load only where
    # GPTQModel is installed; a GGUF file loads in the main environment (transformers + gguf), so
    # a DAG without GPTQ needs no export environment.
    envs = {name: s.env for name, s in _export_stages(table).items()}
    rms = {s.name.removeprefix("reward_"): s.outs[0] for s in table if s.name.startswith("reward_")}
    reference = params.evaluate.reference if rms and params.evaluate.reference in models else None
    stages = []
    for name in sorted(models, key=lambda n: n != reference):
        path, out = models[name], str(RESULTS / "eval" / name)
        args = ["evaluate", "--model", path, "--name", name, "--eval-data", eval_data]
        deps = [path, eval_data]
        if heldout:
            args += ["--heldout", heldout]
            deps.append(heldout)
        for aspect, folder in rms.items():
            args += ["--reward", f"{aspect}={folder}"]
            deps.append(folder)
        if reference and name != reference:
            args += ["--reference", str(RESULTS / "eval" / reference)]
            deps.append(str(RESULTS / "eval" / reference))
        # One core each (posttrain.inference.generation.GENERATION_THREADS, which the command pins too):
        # greedy decoding of a small model gains little from a second thread (a batch of 16 x 64
        # tokens on one core and on two), so on a small machine two evaluations side by side finish
        # sooner than one after the other (figures in benchmarks/RESULTS.md, "Threads").
        stages.append(Stage(f"evaluate_{name}", [*args, "--out", out], deps, [out], ["evaluate"],
                            metrics=[f"{out}/metrics.json"], env=envs.get(name, ""),
                            priority=GATES_EVALUATIONS if name == reference else 0))
    evals = [str(RESULTS / "eval" / name) for name in models]  # the report lists models in DAG order
    report = str(RESULTS / "report")
    curves = [m for n, m in models.items() if n != "base"] + list(rms.values())  # every training stage
    args = ["report"] + [a for e in evals for a in ("--eval", e)] + [a for c in curves for a in ("--curves", c)]
    args += [a for pair in _comparisons(table, models, quantized) for a in ("--compare", pair)]
    args += [a for c in export_checks for a in ("--export-check", c)]   # exports failing their release gate
    args += ["--benchmarks", BENCHMARKS]   # Snakemake's, when it ran the DAG: the report's timing
    stages.append(Stage("report", [*args, "--out", report], evals + curves + export_checks, [report], [],
                        metrics=[f"{report}/metrics.json"], plots=[f"{report}/plots"]))
    return stages


def _comparisons(table: list[Stage], models: dict[str, str], quantized: dict[str, str]) -> list[str]:
    """`MODEL=BASELINE` for the report's paired tests: each model against the model it was made from
    (SFT and the RL-first stage from the base, an RL stage from its init, an export from its
    source), and the distilled student against the same student trained without a teacher."""
    by_folder = {folder: name for name, folder in models.items()}
    pairs = []
    for s in table:
        model = by_folder.get(s.outs[0]) if s.outs else None
        for flag in ("--init", "--base"):
            if model and flag in s.args and s.args[s.args.index(flag) + 1] in by_folder:
                pairs.append(f"{model}={by_folder[s.args[s.args.index(flag) + 1]]}")
    # a preference stage also against each RL stage from the same init: the two routes from one model
    init_of = {by_folder[s.outs[0]]: s.args[s.args.index("--init") + 1] for s in table
               if s.outs and s.outs[0] in by_folder and "--init" in s.args}
    routes = {kind: [by_folder[s.outs[0]] for s in table if s.name.startswith(kind) and s.outs[0] in by_folder]
              for kind in ("preference_", "rl_")}
    pairs += [f"{p}={r}" for p in routes["preference_"] for r in routes["rl_"] if init_of.get(r) == init_of[p]]
    if "distilled" in models and "student_sft" in models:
        pairs.append("distilled=student_sft")
    pairs += [f"{name}={Path(folder).parent.name}" for name, folder in quantized.items()
              if Path(folder).parent.name in models]
    return pairs


# a PPO stage's per-step statistics beside its reward curves (all in its log.csv)
PPO_PLOTS = ["kl", "value_loss", "clip_fraction", "approx_kl", "explained_variance", "completion_length"]


def _deps_of(paths: list[str], produced: list[str]) -> list[str]:
    """A source inside another stage's output folder depends on that folder (Snakemake cannot
    see files inside a directory output); hub datasets are not files at all."""
    deps: list[str] = []
    for p in paths:
        if p.startswith("hf:"):
            continue
        owner = next((d for d in produced if p.startswith(d + "/")), p)
        if owner not in deps:
            deps.append(owner)
    return deps


def final_targets(table: list[Stage]) -> list[str]:
    return [o for s in table for o in s.outs]
