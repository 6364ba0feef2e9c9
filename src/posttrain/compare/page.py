"""The comparison as compare.md, a self-contained compare.html (curves inlined) and compare.json."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from posttrain.compare.gate import describe
from posttrain.compare.runs import Run

# Curve columns worth overlaying, in panel order (log.csv of SFT, reward models, RL, distillation).
CURVES = ("train_loss", "val_loss", "loss", "reward", "heldout_reward", "kl", "val_accuracy")
VERDICT_NOTE = ("B against A, paired on the same prompts: McNemar's exact test for right/wrong outcomes, "
                "Wilcoxon signed-rank for graded values; `better`/`worse` at p < 0.05 by the metric's "
                "direction, else `within noise`. Metrics without per-prompt values (perplexity) have no test.")


def write(a: Run, b: Run, metrics: list[dict], artifacts: list[dict], out: Path,
          gate: dict | None = None) -> dict[str, Path]:
    """`gate`: the regression gate's result (posttrain.compare.gate.check), when one was asked for."""
    out.mkdir(parents=True, exist_ok=True)
    charts = _curves(a, b, out / "curves")
    (out / "compare.json").write_text(json.dumps(
        {"a": _about(a), "b": _about(b), "metrics": metrics, "artifacts": artifacts, "gate": gate,
         "curves": {k: str(p.relative_to(out)) for k, p in charts.items()}}, indent=2, sort_keys=True) + "\n")
    relative = {k: p.relative_to(out) for k, p in charts.items()}
    (out / "compare.md").write_text(_markdown(a, b, metrics, artifacts, relative, gate))
    (out / "compare.html").write_text(_html(a, b, metrics, artifacts, charts, gate))
    return {"md": out / "compare.md", "html": out / "compare.html", "json": out / "compare.json"}


def _about(run: Run) -> dict:
    return {"label": run.label, "results": _where(run), "commit": run.commit()}


def _where(run: Run) -> str:
    """The run's folder, or for a commit "DVC's cache" (its scratch checkout is gone once written)."""
    return "DVC's cache" if run.checked_out else str(run.results)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _delta(v) -> str:
    return "–" if v is None else "0" if v == 0 else f"{v:+.4g}"


def _p(v) -> str:
    return "–" if v is None else ("< 0.001" if v < 0.001 else f"{v:.3f}")


METRIC_HEAD = ("model", "metric", "A", "B", "B − A", "n", "test", "p", "verdict")


def _metric_cells(r: dict) -> list[str]:
    return [r["model"], r["metric"], _fmt(r["a"]), _fmt(r["b"]), _delta(r["delta"]), _fmt(r["n"]), r["test"] or "–",
            _p(r["p"]), r["verdict"]]


def _changes(r: dict) -> str:
    parts = [f"`{d['key']}` {d['a']!r} → {d['b']!r}" for d in r["params"]]
    parts += [f"input `{k}` changed" for k in r["inputs"]]
    parts += [f"{d['key']} {d['a']} → {d['b']}" for d in r["versions"]]
    parts += ["its stage's code"] if r.get("code") else []
    return "; ".join(parts) or "–"


def _summary(metrics: list[dict], artifacts: list[dict]) -> str:
    moved = [r for r in metrics if r["verdict"] in ("better", "worse", "higher", "lower")]
    changed = [r for r in artifacts if r["status"] not in ("same manifest",)]
    return (f"{len(metrics)} metric values compared, {len(moved)} beyond noise "
            f"({sum(r['verdict'] == 'worse' for r in moved)} worse); "
            f"{len(changed)} of {len(artifacts)} artifacts differ.")


def _gate_lines(gate: dict | None) -> list[str]:
    if gate is None:
        return []
    head = (f"{'Passed' if gate['passed'] else 'FAILED'}: {gate['gated']} metric values checked against their "
            f"noise bands, {len(gate['regressions'])} beyond them in the wrong direction; "
            f"{len(gate['ungated'])} without a band (not gated).")
    return [head] + describe(gate)


def _markdown(a: Run, b: Run, metrics, artifacts, charts, gate=None) -> str:
    lines = [f"# {a.label} (A) against {b.label} (B)", "",
             f"A: `{_where(a)}` (commit {a.commit() or 'unknown'}); "
             f"B: `{_where(b)}` (commit {b.commit() or 'unknown'})",
             "", _summary(metrics, artifacts), ""]
    if gate is not None:
        lines += ["## Regression gate", ""] + [f"- {line}" if i else line for i, line in enumerate(_gate_lines(gate))]
        lines += [""]
    lines += ["## Metrics", "", VERDICT_NOTE, "",
             "| " + " | ".join(METRIC_HEAD) + " |", "|" + "---|" * len(METRIC_HEAD)]
    lines += ["| " + " | ".join(_metric_cells(r)) + " |" for r in metrics]
    lines += ["", "## Artifacts: what changed", "", "| artifact | status | what differs |", "|---|---|---|"]
    lines += [f"| {r['artifact']} | {r['status']} | {_changes(r)} |" for r in artifacts]
    if charts:
        lines += ["", "## Curves (A solid, B dashed)", ""] + [f"![{k}]({p})" for k, p in charts.items()]
    return "\n".join(lines) + "\n"


def _html(a: Run, b: Run, metrics, artifacts, charts, gate=None) -> str:
    esc = html.escape

    def table(head, rows):
        body = "".join("<tr" + (f' class="{esc(c)}"' if c else "") + ">" + "".join(f"<td>{esc(x)}</td>" for x in row)
                       + "</tr>" for row, c in rows)
        return "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + f"</tr>{body}</table>"

    metric_table = table(METRIC_HEAD, [(_metric_cells(r), r["verdict"].replace(" ", "-")) for r in metrics])
    artifact_table = table(("artifact", "status", "what differs"),
                           [((r["artifact"], r["status"], _changes(r).replace("`", "")), None) for r in artifacts])
    figures = "".join(f'<figure><img alt="{esc(k)}" src="data:image/png;base64,'
                      f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{esc(k)}</figcaption></figure>'
                      for k, p in charts.items())
    style = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}.better td{background:#e6f4e6}"
             ".worse td{background:#fbe3e3}figure{display:inline-block;margin:.5em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(a.label)} against {esc(b.label)}</title>"
            f"<style>{style}</style></head><body><h1>{esc(a.label)} (A) against {esc(b.label)} (B)</h1>"
            f"<p>A: <code>{esc(_where(a))}</code> (commit {esc(a.commit() or 'unknown')}); "
            f"B: <code>{esc(_where(b))}</code> (commit {esc(b.commit() or 'unknown')})</p>"
            f"<p id='summary'>{esc(_summary(metrics, artifacts))}</p>"
            + ("<h2>Regression gate</h2><ul id='gate'>" + "".join(f"<li>{esc(x)}</li>" for x in _gate_lines(gate))
               + "</ul>" if gate is not None else "") +
            f"<h2>Metrics</h2><p>{esc(VERDICT_NOTE.replace('`', ''))}</p>"
            f"{metric_table.replace('`', '')}<h2>Artifacts: what changed</h2>{artifact_table}"
            + (f"<h2>Curves (A solid, B dashed)</h2>{figures}" if charts else "") + "</body></html>\n")


def _curves(a: Run, b: Run, out: Path) -> dict[str, Path]:
    """One figure per artifact with a log.csv in either run: each CURVES column, A and B overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = {}
    for artifact in sorted(set(a.manifests) | set(b.manifests)):
        logs = {(side, style): _read(run.curves(artifact))
                for side, run, style in (("A", a, "-"), ("B", b, "--")) if run.curves(artifact)}
        columns = [c for c in CURVES if any(c in cols for cols in logs.values())]
        if not columns:
            continue
        fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 2.6), squeeze=False)
        for ax, column in zip(axes[0], columns):
            for (label, style), cols in logs.items():
                points = cols.get(column, [])
                if points:
                    ax.plot(*zip(*points), style, marker=".", label=label)
            ax.set_title(column, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(artifact, fontsize=10)
        fig.tight_layout()
        out.mkdir(parents=True, exist_ok=True)
        path = out / (artifact.replace("/", "_") + ".png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        charts[artifact] = path
    return charts


def _read(path: Path) -> dict[str, list[tuple[float, float]]]:
    cols: dict[str, list[tuple[float, float]]] = {}
    with open(path) as fh:
        for row in csv.DictReader(fh):
            step = row.get("step")
            for key, value in row.items():
                if key != "step" and value not in (None, "") and step not in (None, ""):
                    try:
                        cols.setdefault(key, []).append((float(step), float(value)))
                    except ValueError:
                        continue
    return cols
