"""Report stage: every model's metrics in one table, a bar chart per metric, every stage's
training curves.

    posttrain report --eval results/eval/base --eval results/eval/sft --curves results/sft \\
        --out results/report

Writes metrics.json ({model: {metric: value}}, a DVC metric), report.md, a self-contained
report.html (images inlined) and plots/*.png (also declared as DVC plots).

    posttrain publish-report results/report docs/results/demo.md

copies report.md's tables into the repository's docs with the commit and machine that made them
(`make demo` does this last), so the demo's figures can be read without running it.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import platform
import re
import shutil
from pathlib import Path

from posttrain.core import benchmark_files
from posttrain.core.commands import params_arg
from posttrain.core.manifest import read_run_record, require_manifest, write_json, write_manifest
from posttrain.stats import paired
from posttrain.stats.directions import BETTER

# Training stages whose own metrics say whether to trust them get a table each: a reward model's
# held-out pairwise accuracy; an RL stage's held-out reward at its start and at the chosen
# checkpoint, and how far it moved from its init (KL). No wall-clock column: the report is a
# versioned artifact and two runs of the same DAG must give the same bytes.
# (title, html id, row key, columns)
STAGE_TABLES = {
    "heldout_accuracy": ("Reward models", "reward-models", "aspect",
                         ("heldout_accuracy", "heldout_mean_margin", "heldout_pairs", "train_pairs")),
    "heldout_reward_chosen": ("RL stages", "rl-stages", "stage",
                              ("algorithm", "init", "steps", "chosen_step", "heldout_reward_start",
                               "heldout_reward_chosen", "kl_max")),
}


def main(eval_dirs: list[Path], curve_dirs: list[Path], out: Path, compare: list[str] | None = None,
         benchmarks: Path | None = None, export_checks: list[Path] | None = None) -> dict:
    records, speed, folders = [], {}, {}
    for d in eval_dirs:
        manifest = require_manifest(d, "evaluate")
        records.append(json.loads((d / "metrics.json").read_text()))
        timings = read_run_record(d)
        m = records[-1]["metrics"]
        folders[records[-1]["model"]] = d
        speed[records[-1]["model"]] = {"parameters": m.get("parameters"), "weights_mb": m.get("weights_mb"),
                                       "tokens_per_second": timings.get("generation_tokens_per_second"),
                                       **_training(manifest)}
    table = {r["model"]: r["metrics"] for r in records}
    partial = sorted(r["model"] for r in records if r.get("partial"))
    dtypes = _dtype_note({r["model"]: r["dtype"] for r in records if r.get("dtype")})
    metrics = [m for m in BETTER if any(m in v for v in table.values())]
    metrics += sorted({m for v in table.values() for m in v} - set(metrics))

    if out.exists():
        shutil.rmtree(out)
    (out / "plots").mkdir(parents=True)
    charts = [_bar_chart(table, m, out / "plots" / f"{m}.png") for m in metrics]
    curves, stages, kept_init = [], {key: {} for key in STAGE_TABLES}, []
    for d in curve_dirs:
        require_manifest(d, "a training stage")
        label = d.name if d.parent.name == "results" else f"{d.parent.name}_{d.name}"  # sft, reward_helpful
        if (d / "curves.png").is_file():
            dst = out / "plots" / f"curves_{label}.png"
            shutil.copy(d / "curves.png", dst)
            curves.append(dst)
        stage_metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
        for key, (_, _, row, columns) in STAGE_TABLES.items():
            if key in stage_metrics:
                stages[key][stage_metrics[row]] = {c: stage_metrics.get(c) for c in columns}
        if "heldout_reward_chosen" in stage_metrics and stage_metrics.get("chosen_step") == 0:
            kept_init.append(d.name)   # an RL stage's model is named after its folder

    tests = _significance(folders, compare or [], metrics)
    timing = _timing(benchmarks) if benchmarks else []
    marks, notes = _marks(partial, kept_init, _gate_failures(export_checks or []))
    write_json(out / "metrics.json", table)
    write_json(out / "significance.json", tests)
    (out / "report.md").write_text(_markdown(table, metrics, marks, notes, charts, curves, stages, speed, tests,
                                             dtypes))
    (out / "report.html").write_text(_html(table, metrics, marks, notes, charts, curves, stages, speed, tests,
                                           dtypes))
    _write_timing(out, timing, speed)
    write_manifest(out, stage="report", params={}, seed=None,
                   inputs={f"eval:{d.name}": d for d in eval_dirs} | {f"curves:{d.name}": d for d in curve_dirs}
                   | {f"export_check:{d.parent.name}": d for d in export_checks or []},
                   extra={"models": list(table), "partial": partial,
                          "reward_models": stages["heldout_accuracy"], "rl_stages": stages["heldout_reward_chosen"]})
    return table


def _significance(folders: dict[str, Path], pairs: list[str], metrics: list[str]) -> list[dict]:
    """Paired tests of every metric two models share, for each `MODEL=BASELINE` pair whose two
    evaluations the report has."""
    samples = {}
    out = []
    for pair in pairs:
        model, _, baseline = pair.partition("=")
        if model not in folders or baseline not in folders:
            raise ValueError(f"--compare {pair}: the report has evaluations of {sorted(folders)}")
        for name in (model, baseline):
            if name not in samples:
                path = folders[name] / "samples.jsonl"
                samples[name] = [json.loads(line) for line in open(path)] if path.is_file() else []
        for metric in filter(paired.testable, metrics):
            c = paired.compare(model, samples[model], baseline, samples[baseline], metric)
            if c is not None:
                out.append(c.record(BETTER.get(metric)))
    return out


SIGNIFICANCE_COLUMNS = ("model", "baseline", "metric", "n", "baseline_value", "model_value", "delta", "test", "p",
                        "informative", "verdict")
SIGNIFICANCE_NOTE = (
    "Each model against the model it was made from (an RL stage's init, an export's source, the distilled student "
    "against the same student trained without a teacher; a preference stage also against the RL stage from the same "
    "init), on the same prompts: McNemar's exact test for 0/1 "
    f"outcomes, the Wilcoxon signed-rank test for scores. better / worse: p < {paired.ALPHA} in the metric's "
    "direction; otherwise within noise. n: prompts both models were scored on; informative: the prompts the "
    "difference rests on (discordant pairs, non-zero differences). No correction for the number of tests.")
KEPT_INIT_NOTE = ("Selection kept step 0 (no checkpoint's held-out reward rose above the start, so the stage returned "
                  "its init model unchanged): ")


def _gate_failures(check_dirs: list[Path]) -> dict[str, list[str]]:
    """The exports that fail their release gate (export_check's gate.json), by report name
    (<model>_<format>), with what they lost."""
    failed = {}
    for d in check_dirs:
        require_manifest(d, "export-check")
        gates = json.loads((d / "gate.json").read_text()) if (d / "gate.json").is_file() else {}
        failed |= {f"{d.parent.name}_{fmt}": g["failures"] for fmt, g in gates.items() if not g["passed"]}
    return failed


def _marks(partial: list[str], kept_init: list[str], gates: dict[str, list[str]]) -> tuple[dict[str, str], list[str]]:
    """Each marked model's label in the tables, and the notes above them that say why."""
    marks = {**{m: "fails its release gate" for m in gates}, **{m: "init kept" for m in kept_init},
             **{m: "partial" for m in partial}}
    notes = [f"Partial evaluation (a limit was set) for: {', '.join(partial)}."] if partial else []
    if kept_init:
        notes.append(f"{KEPT_INIT_NOTE}{', '.join(kept_init)}.")
    notes += [f"{m} fails its release gate (export.max_loss): {'; '.join(lost)}." for m, lost in gates.items()]
    return marks, notes


TRAINING_COLUMNS = ("training (s)", "peak memory (GB)")


def _training(eval_manifest: dict) -> dict:
    """The training time and peak memory of the model an evaluation scored, from the model's run
    record: none for the base model or an export, nor from a checkout (DVC carries no run records)."""
    model = eval_manifest.get("inputs", {}).get("model", {}).get("path")
    record = read_run_record(model) if model and Path(model).is_dir() else {}
    seconds = record.get("train_runtime_s")
    return dict(zip(TRAINING_COLUMNS, (round(seconds) if seconds is not None else None,
                                       record.get("peak_memory_gb"))))


def _timing(folder: Path) -> list[dict]:
    """Each rule's wall seconds and peak memory from Snakemake's benchmark files, in the order the
    rules ended."""
    return sorted(benchmark_files.read(folder), key=lambda r: r["end"])


def _timing_summary(timing: list[dict]) -> str:
    span = max(r["end"] for r in timing) - min(r["end"] - r["s"] for r in timing)
    longest = sorted(timing, key=lambda r: -r["s"])[:3]
    return (f"{len(timing)} rules ran in {span / 60:.1f} minutes of wall-clock (from the first one's start to the "
            f"last one's end, by Snakemake's benchmark files; a rule not rerun keeps its earlier run) and "
            f"{sum(r['s'] for r in timing) / 60:.1f} minutes one after the other; the longest: "
            + ", ".join(f"{r['rule']} {r['s']:.0f} s" for r in longest) + ".")


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _bar_chart(table: dict, metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in table if table[m].get(metric) is not None]
    values = [table[m][metric] for m in models]
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(models) + 1.5), 3))
    bars = ax.bar(models, values, color="#4c72b0")
    ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=8)
    direction = BETTER.get(metric)
    ax.set_title(f"{metric}" + (f" ({direction} is better)" if direction else ""), fontsize=10)
    ax.margins(y=0.2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# Size: parameters and weight size repeat exactly. What varies from run to run (each rule's wall
# time, the evaluations' tokens/s) is on the timing page beside the report (timing.md, .html),
# which .dvcignore keeps out of the report's DVC hash: a rerun reproduces the report byte for byte.
SIZE_COLUMNS = ("parameters", "weights_mb")
SPEED_NOTE = "tokens/s: batched greedy generation during the evaluation, on the machine that ran it (wall-clock)."
TRAINING_NOTE = ("Each trained model's last training run (a resumed run counts only its own part): wall seconds and "
                 "the process's peak memory (GPU allocations on a GPU, resident set on a CPU), from its run.json.")
TIMING_LINK = ("This run's timing (each rule's wall time and memory, the models' generation speed): {link}, beside "
               "this report; wall-clock facts, so not part of its DVC hash.")


# Where the stages' wall time and memory (Snakemake's benchmark files) and the benchmark figures
# are: the report sits in results/report/, the repository's benchmarks/ two levels up.
COST_NOTE = ("Each stage's wall time and peak memory: `python benchmarks/stage_costs.py logs/benchmarks`. "
             "Benchmarks (workflow overhead, training throughput, the demo's stage costs) and the machine they "
             "ran on:")
RESULTS_MD = "benchmarks/RESULTS.md"
RESULTS_LINK = "../../benchmarks/RESULTS.md"


def _dtype_note(dtypes: dict[str, str]) -> str:
    """Which dtype the models answered in (evaluate.dtype); a warning when they differ."""
    by_dtype: dict[str, list[str]] = {}
    for model, dtype in dtypes.items():
        by_dtype.setdefault(dtype, []).append(model)
    if not by_dtype:   # evaluations from before the dtype was recorded
        return ""
    if len(by_dtype) == 1:
        return f"The models answered in {next(iter(by_dtype))} (`evaluate.dtype`)."
    listed = "; ".join(f"{dtype}: {', '.join(models)}" for dtype, models in sorted(by_dtype.items()))
    return f"The models answered in different dtypes ({listed}): compare figures within one dtype."


def _markdown(table, metrics, marks, notes, charts, curves, stages, speed, tests, dtypes="") -> str:
    lines = ["# posttrain report", "", TIMING_LINK.format(link="[timing.md](timing.md)"), ""]
    if dtypes:
        lines += [dtypes, ""]
    for note in notes:
        lines += [f"**{note}**", ""]
    lines += ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for model, values in table.items():
        mark = f" ({marks[model]})" if model in marks else ""
        lines.append(f"| {model}{mark} | " + " | ".join(_fmt(values.get(m)) for m in metrics) + " |")
    for key, (title, _, row, columns) in STAGE_TABLES.items():
        if stages[key]:
            lines += ["", f"## {title}", "", f"| {row} | " + " | ".join(columns) + " |",
                      "|---" * (len(columns) + 1) + "|"]
            lines += [f"| {name} | " + " | ".join(_fmt(v[c]) for c in columns) + " |"
                      for name, v in stages[key].items()]
    if tests:
        lines += ["", "## Is it more than noise?", "", SIGNIFICANCE_NOTE, "",
                  "| " + " | ".join(SIGNIFICANCE_COLUMNS) + " |", "|---" * len(SIGNIFICANCE_COLUMNS) + "|"]
        lines += ["| " + " | ".join(_verdict_md(t[c]) if c == "verdict" else _fmt(t[c]) for c in SIGNIFICANCE_COLUMNS)
                  + " |" for t in tests]
    if any(v["parameters"] for v in speed.values()):
        lines += ["", "## Size", ""] + _md_table("model", SIZE_COLUMNS, speed)
    lines += ["", "## Metrics", ""] + [f"![{p.stem}](plots/{p.name})" for p in charts]
    if curves:
        lines += ["", "## Training curves", ""] + [f"![{p.stem}](plots/{p.name})" for p in curves]
    lines += ["", "## Cost", "", f"{COST_NOTE} [{RESULTS_MD}]({RESULTS_LINK})."]
    return "\n".join(lines) + "\n"


def _md_table(row: str, columns: tuple[str, ...], rows: dict[str, dict]) -> list[str]:
    return ([f"| {row} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
            + [f"| {name} | " + " | ".join(_fmt(v.get(c)) for c in columns) + " |" for name, v in rows.items()])


def _write_timing(out: Path, timing: list[dict], speed: dict[str, dict]) -> None:
    """timing.md and timing.html: the DAG's timing (Snakemake's benchmark files), each model's
    generation speed in its evaluation, and each trained model's training time and peak memory."""
    rules = {r["rule"]: {"wall (s)": round(r["s"]), "peak RSS (MB)": r["max_rss_mb"]} for r in timing}
    generation = {name: {"tokens_per_second": v.get("tokens_per_second")} for name, v in speed.items()}
    summary = (f"Timing: {_timing_summary(timing)}" if timing else
               "Timing: no Snakemake benchmark files were given (`--benchmarks logs/benchmarks`).")
    lines = ["# This run's timing", "", summary, "", "## Generation speed", ""]
    lines += _md_table("model", ("tokens_per_second",), generation) + ["", SPEED_NOTE]
    trained = {name: {c: v[c] for c in TRAINING_COLUMNS} for name, v in speed.items() if v.get("training (s)")}
    if trained:
        lines += ["", "## Training", ""] + _md_table("model", TRAINING_COLUMNS, trained) + ["", TRAINING_NOTE]
    if rules:
        lines += ["", "## Rules, in the order they ended", ""] + _md_table("rule", ("wall (s)", "peak RSS (MB)"), rules)
    (out / "timing.md").write_text("\n".join(lines) + "\n")
    page = (f"<h1>This run's timing</h1><p id=\"timing\">{html.escape(summary)}</p><h2>Generation speed</h2>"
            + _html_table("speed", "model", ("tokens_per_second",), generation) + f"<p>{html.escape(SPEED_NOTE)}</p>"
            + (f"<h2>Training</h2>{_html_table('training', 'model', TRAINING_COLUMNS, trained)}"
               f"<p>{html.escape(TRAINING_NOTE)}</p>" if trained else "")
            + ("<h2>Rules, in the order they ended</h2>"
               + _html_table("rules", "rule", ("wall (s)", "peak RSS (MB)"), rules) if rules else ""))
    (out / "timing.html").write_text(f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                                     f"<title>posttrain timing</title>\n<style>{STYLE}</style></head><body>\n"
                                     f"{page}\n</body></html>\n")


def _html_table(table_id: str, row: str, columns: tuple[str, ...], rows: dict[str, dict]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f"<tr><th>{html.escape(str(name))}</th>" + "".join(f"<td>{html.escape(_fmt(v.get(c)))}</td>"
                                                                 for c in columns) + "</tr>"
                   for name, v in rows.items())
    return (f'<table id="{table_id}"><thead><tr><th>{html.escape(row)}</th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _verdict_md(verdict: str) -> str:
    return verdict if verdict == "within noise" else f"**{verdict}**"


def _significance_html(tests: list[dict]) -> str:
    if not tests:
        return ""
    head = "".join(f"<th>{c}</th>" for c in SIGNIFICANCE_COLUMNS)
    rows = "".join(f'<tr class="{t["verdict"].replace(" ", "-")}">' + "".join(
        f"<td>{html.escape(_fmt(t[c]))}</td>" for c in SIGNIFICANCE_COLUMNS) + "</tr>" for t in tests)
    return (f'<h2>Is it more than noise?</h2><p>{html.escape(SIGNIFICANCE_NOTE)}</p>'
            f'<table id="significance"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{html.escape(alt)}</figcaption></figure>')


TIMING_ANCHOR = '<a href="timing.html">timing.html</a>'
STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
thead th, tbody th { background: #f3f3f3; text-align: left; }
.partial { color: #a33; font-size: 0.9em; }
tr.better td { background: #e6f4e6; } tr.worse td { background: #f8e3e3; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 0.8em; color: #666; }
"""


def _html(table, metrics, marks, notes, charts, curves, stages, speed, tests, dtypes="") -> str:
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    body = ""
    for model, values in table.items():
        mark = f' <span class="partial">{html.escape(marks[model])}</span>' if model in marks else ""
        body += f"<tr><th>{html.escape(model)}{mark}</th>" + "".join(
            f"<td>{_fmt(values.get(m))}</td>" for m in metrics) + "</tr>"
    note = "".join(f'<p class="partial">{html.escape(n)}</p>' for n in notes)
    if dtypes:
        note = f'<p id="dtype">{html.escape(dtypes)}</p>' + note
    note = f'<p id="timing">{TIMING_LINK.format(link=TIMING_ANCHOR)}</p>' + note
    stage_tables = "".join(f"<h2>{title}</h2>{_html_table(table_id, row, columns, stages[key])}"
                           for key, (title, table_id, row, columns) in STAGE_TABLES.items() if stages[key])
    if any(v["parameters"] for v in speed.values()):
        stage_tables += f"<h2>Size</h2>{_html_table('size', 'model', SIZE_COLUMNS, speed)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>posttrain report</title>
<style>{STYLE}</style></head><body>
<h1>posttrain report</h1>
{note}
<table id="metrics"><thead><tr><th>model</th>{head}</tr></thead><tbody>{body}</tbody></table>
{stage_tables}
{_significance_html(tests)}
<h2>Metrics</h2><div class="grid" id="charts">{''.join(_img(p, p.stem) for p in charts)}</div>
<h2>Training curves</h2><div class="grid" id="curves">{''.join(_img(p, p.stem) for p in curves)}</div>
<h2>Cost</h2><p id="cost">{html.escape(COST_NOTE)} <a href="{RESULTS_LINK}">{RESULTS_MD}</a>.</p>
</body></html>
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one report over every evaluated model")
    p.add_argument("--eval", action="append", type=Path, default=[], required=True,
                   help="an evaluate output; repeatable")
    p.add_argument("--curves", action="append", type=Path, default=[], help="a training stage output; repeatable")
    p.add_argument("--compare", action="append", default=[], metavar="MODEL=BASELINE",
                   help="test MODEL's metrics against BASELINE's on the same prompts; repeatable")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.add_argument("--benchmarks", type=Path, help="Snakemake's benchmark files (logs/benchmarks): the DAG's timing")
    p.add_argument("--export-check", action="append", type=Path, default=[],
                   help="an export_check output: exports that fail their release gate are marked; repeatable")
    p.set_defaults(run=lambda params, a: main(a.eval, a.curves, a.out, a.compare, a.benchmarks, a.export_check))

    p = sub.add_parser("publish-report", help="a report's tables, with its commit and machine, as a docs page")
    p.add_argument("report", type=Path, help="a report output (results/report)")
    p.add_argument("dest", type=Path, help="the page to write (docs/results/demo.md)")
    p.set_defaults(run=lambda a: publish(a.report, a.dest) and 0, params_free=True)


def publish(report_dir: Path, dest: Path) -> str:
    """report.md's tables under a header naming the commit the report was made at and the machine;
    its images stay with the report (the published page links no binary files)."""
    manifest = require_manifest(report_dir, "report")
    body = (report_dir / "report.md").read_text().split("\n", 1)[1]      # below the title
    body = re.sub(r"\n(?:!\[[^\]]*\]\(plots/[^)]*\)\n)+", _plots_line, body)
    commit = (read_run_record(report_dir).get("git_commit") or manifest.get("git_commit")
              or "unknown (not a git checkout)")
    page = (f"# The demo's report\n\nWritten by `make demo` (`posttrain publish-report`) from "
            f"`{report_dir}/report.md`: commit `{commit}`, {_machine()}. Greedy decoding and seeded training: "
            f"a rerun on the same kind of machine gives the same figures (a GPTQ row only with the same thread "
            f"count).\n{body}")
    page = page.replace(f"]({RESULTS_LINK})", f"]({os.path.relpath(RESULTS_MD, dest.parent)})")
    page = page.replace("[timing.md](timing.md)", "`results/report/timing.md`")    # the page is not beside it
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(page)
    return page


def _plots_line(images: re.Match) -> str:
    names = re.findall(r"\(plots/([^)]*)\)", images.group(0))
    return f"\nIn `results/report/plots/` and inline in `results/report/report.html`: {', '.join(names)}.\n"


def _machine() -> str:
    """The CPU's model name and family (figures of one model and family repeat) and its cores."""
    fields: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    family = f" family {fields['cpu family']}" if "cpu family" in fields else ""
    return f"{name}{family}, {os.cpu_count()} cores"
