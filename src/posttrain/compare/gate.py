"""The regression gate: how far each headline metric moves between seeded repeats of a run
(different seeds, same code and data) is stored as its noise band; a comparison fails the gate
when a metric moves beyond its band in the wrong direction, and names the stage where the two
runs began to differ.

A band is Z standard deviations of the difference of two runs (sd x sqrt 2, the sd measured over
the repeats): with Z = 3 a seed-only change crosses it about once in 700 metrics if the metric's
seed noise is normal. Few repeats estimate the sd loosely; more repeats make the band honest.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from posttrain.compare.runs import Run
from posttrain.stats.directions import BETTER, RELATIVE, loss

Z = 3.0


def measure(runs: list[Run], z: float = Z) -> dict:
    """The noise band of every directed metric (stats.directions.BETTER) of every model that all
    `runs` evaluated, in the units of `directions.loss` (relative for perplexity)."""
    if len(runs) < 2:
        raise ValueError("noise bands need at least two seeded repeats of the same run")
    values: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for model in run.evaluations():
            for metric, value in run.metrics(model).items():
                if metric in BETTER:
                    values.setdefault(model, {}).setdefault(metric, []).append(value)
    bands: dict[str, dict[str, dict]] = {}
    for model, metrics in sorted(values.items()):
        for metric, seen in metrics.items():
            if len(seen) != len(runs):
                continue          # not in every repeat: no band, so not gated
            scale = (abs(statistics.fmean(seen)) or 1.0) if metric in RELATIVE else 1.0
            sd = statistics.stdev(seen) / scale
            bands.setdefault(model, {})[metric] = {"values": seen, "sd": round(sd, 6),
                                                   "band": round(z * math.sqrt(2) * sd, 6)}
    return {"runs": [r.label for r in runs], "commits": [r.commit() for r in runs], "z": z, "bands": bands}


def load(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no noise bands; measure them from seeded repeats with "
                                f"`posttrain noise-bands RUN RUN ... --out {path}`")
    return json.loads(path.read_text())


def check(metrics: list[dict], artifacts: list[dict], b: Run, bands: dict) -> dict:
    """The comparison's metric rows against the bands: each regression (a move in the wrong direction
    beyond the band) with the stage(s) where the runs began to differ, and what was not gated."""
    regressions, gated, ungated = [], 0, []
    for row in metrics:
        if row["metric"] not in BETTER or row["a"] is None or row["b"] is None:
            continue
        band = bands["bands"].get(row["model"], {}).get(row["metric"])
        if band is None:
            ungated.append(f"{row['model']}.{row['metric']}")
            continue
        gated += 1
        worse = loss(row["metric"], row["a"], row["b"])
        if worse > band["band"]:
            regressions.append({"model": row["model"], "metric": row["metric"], "a": row["a"], "b": row["b"],
                                "worse_by": round(worse, 6), "band": band["band"],
                                "relative": row["metric"] in RELATIVE, "origins": origins(row["model"], b, artifacts)})
    return {"passed": not regressions, "gated": gated, "ungated": ungated, "regressions": regressions}


def origins(model: str, run: Run, artifacts: list[dict]) -> list[dict]:
    """The artifacts upstream of `model`'s evaluation (itself included) that differ between the runs
    while every artifact they were made from is the same: where the difference entered."""
    rows = {r["artifact"]: r for r in artifacts}
    evaluation = next((a for a, m in run.manifests.items() if m.get("stage") == f"evaluate:{model}"), None)
    if evaluation is None:
        return []
    closure, todo = {}, [evaluation]
    while todo:
        artifact = todo.pop()
        if artifact not in closure:
            closure[artifact] = _parents(artifact, run)
            todo += closure[artifact]
    differs = {a for a in closure if rows.get(a, {}).get("status", "same manifest") != "same manifest"}
    return [rows[a] for a in sorted(differs) if not differs & set(closure[a])]


def _parents(artifact: str, run: Run) -> list[str]:
    """The artifacts of `run` that `artifact`'s manifest names as inputs."""
    found = []
    for entry in run.manifests[artifact].get("inputs", {}).values():
        path = str(entry.get("path", "")) if isinstance(entry, dict) else ""
        inside = path.rsplit("results/", 1)[-1] if "results/" in path else path
        owners = [a for a in run.manifests if inside == a or inside.startswith(a + "/")]
        if owners:
            found.append(max(owners, key=len))
    return found


def describe(result: dict) -> list[str]:
    """One line per regression: model, metric, the move against its band, and where it began."""
    lines = []
    for r in result["regressions"]:
        unit = " (relative)" if r["relative"] else ""
        began = "; ".join(_origin(o) for o in r["origins"]) or "no artifact upstream differs"
        lines.append(f"{r['model']} {r['metric']}: {r['a']:.4g} -> {r['b']:.4g}, worse by {r['worse_by']:.4g}{unit}, "
                     f"beyond its noise band {r['band']:.4g}; began at {began}")
    return lines


def _origin(row: dict) -> str:
    what = [f"{d['key']} {d['a']!r} -> {d['b']!r}" for d in row["params"]]
    what += [f"input {k}" for k in row["inputs"]] + [f"{d['key']} {d['a']} -> {d['b']}" for d in row["versions"]]
    what += ["its code"] if row.get("code") else []
    return f"{row['artifact']} ({', '.join(what) or 'rerun with the same inputs'})"
