"""What differs between two runs: metrics (with paired tests where the evaluations stored
per-prompt values), parameters, inputs and package versions, per artifact."""

from __future__ import annotations

from posttrain.compare.runs import Run
from posttrain.stats import paired
from posttrain.stats.directions import BETTER

# Size figures, not quality: shown only when they differ.
SIZE = {"parameters", "weights_mb"}


def metric_rows(a: Run, b: Run) -> list[dict]:
    """One row per (model, metric) in either run: both values, B - A, and B against A paired on the
    same prompts (McNemar or Wilcoxon, posttrain.stats.paired) where both stored them."""
    rows = []
    evals_a, evals_b = a.evaluations(), b.evaluations()
    for model in sorted(set(evals_a) | set(evals_b)):
        ma = a.metrics(model) if model in evals_a else {}
        mb = b.metrics(model) if model in evals_b else {}
        both = model in evals_a and model in evals_b
        samples = (a.samples(model), b.samples(model)) if both else ([], [])
        for metric in _ordered(set(ma) | set(mb)):
            va, vb = ma.get(metric), mb.get(metric)
            if metric in SIZE and va == vb:
                continue
            row = {"model": model, "metric": metric, "a": va, "b": vb,
                   "delta": round(vb - va, 6) if va is not None and vb is not None else None,
                   "n": None, "test": None, "p": None, "verdict": _plain_verdict(va, vb)}
            if both and paired.testable(metric) and all(samples):
                test = paired.compare(model, samples[1], model, samples[0], metric)
                if test is not None:
                    row.update(n=test.n, test=test.test, p=test.p, verdict=test.verdict(BETTER.get(metric)))
            rows.append(row)
    return rows


def _ordered(metrics: set[str]) -> list[str]:
    return [m for m in BETTER if m in metrics] + sorted(metrics - set(BETTER))


def _plain_verdict(va, vb) -> str:
    if va is None or vb is None:
        return "only in A" if vb is None else "only in B"
    return "same" if va == vb else "no per-prompt test"


def artifact_rows(a: Run, b: Run) -> list[dict]:
    """Per artifact in either run: whether it changed (its manifest's hash), the parameters that
    differ, the inputs whose content differs, the package versions that differ, and whether the
    code of its stage differs."""
    from posttrain.core.manifest import input_hash

    rows = []
    for name in sorted(set(a.manifests) | set(b.manifests)):
        ma, mb = a.manifests.get(name), b.manifests.get(name)
        if ma is None or mb is None:
            rows.append({"artifact": name, "status": "only in A" if mb is None else "only in B",
                         "params": [], "inputs": [], "versions": [], "code": False})
            continue
        same = input_hash(a.results / name) == input_hash(b.results / name)
        params = _flat_diff(ma.get("params") or {}, mb.get("params") or {})
        inputs = [key for key in sorted(set(ma.get("inputs", {})) | set(mb.get("inputs", {})))
                  if _digest(ma, key) != _digest(mb, key)]
        versions = _flat_diff(ma.get("versions") or {}, mb.get("versions") or {})
        code = ma.get("code_sha256") != mb.get("code_sha256")       # the stage's own modules were edited
        status = "same manifest" if same else ("changed" if params or inputs or versions or code else "rerun")
        rows.append({"artifact": name, "status": status, "params": params, "inputs": inputs, "versions": versions,
                     "code": code})
    return rows


def _digest(manifest: dict, key: str):
    entry = manifest.get("inputs", {}).get(key)
    return entry.get("sha256") if isinstance(entry, dict) else entry


def _flat_diff(a: dict, b: dict) -> list[dict]:
    fa, fb = _flatten(a), _flatten(b)
    return [{"key": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
