"""export-check: what quantization costs, against the unquantized model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from posttrain.config import ExportParams
from posttrain.core.manifest import read_manifest, require_manifest, write_json, write_manifest
from posttrain.core.publish import publish, staging
from posttrain.models.sources import weights_mb
from posttrain.stats.directions import RELATIVE, loss

log = logging.getLogger(__name__)


# --- quality cost ----------------------------------------------------------------------------------

# Evaluation metrics that describe the files rather than the model's quality.
NOT_COMPARED = {"parameters", "weights_mb"}


def check(merged_dir: Path, quantized: dict[str, Path], eval_dir: Path, quantized_evals: dict[str, Path],
          out: Path, cfg: ExportParams | None = None) -> dict:
    """Size ratio and metric deltas (quantized - unquantized) per format; perplexity also as a
    relative change, since its scale depends on the model. With `cfg.max_loss`, each format's
    release gate (`gate_passed_<format>`; gate.json and README.md say why)."""
    max_loss = cfg.max_loss if cfg else {}
    require_manifest(merged_dir, "export-merge")
    reference = json.loads((eval_dir / "metrics.json").read_text())["metrics"]
    merged_mb = weights_mb(merged_dir)
    formats, gates = {}, {}
    for name, folder in sorted(quantized.items()):
        if name not in quantized_evals:
            raise ValueError(f"export-check: format {name!r} has no evaluation (--quantized-eval {name}=DIR)")
        require_manifest(folder, f"export-{name}")
        got = json.loads((quantized_evals[name] / "metrics.json").read_text())["metrics"]
        entry = {"size_mb": round(weights_mb(folder), 3), "size_ratio": round(weights_mb(folder) / merged_mb, 4)}
        for key in sorted(set(got) & set(reference) - NOT_COMPARED):
            if isinstance(got[key], (int, float)) and isinstance(reference[key], (int, float)):
                entry[key] = got[key]
                entry[f"{key}_delta"] = round(got[key] - reference[key], 6)
        if reference.get("perplexity") and got.get("perplexity"):
            entry["perplexity_change"] = round(got["perplexity"] / reference["perplexity"] - 1, 6)
        formats[name] = entry
        if max_loss:
            gates[name] = gate(reference, got, max_loss)
    metrics = {"merged_size_mb": round(merged_mb, 3), "reference": read_manifest(eval_dir).get("stage"),
               **{f"{k}_{fmt}": v for fmt, entry in formats.items() for k, v in entry.items()},
               **{f"gate_passed_{fmt}": g["passed"] for fmt, g in gates.items()}}
    tmp = staging(out)
    write_json(tmp / "metrics.json", metrics)
    if gates:
        write_json(tmp / "gate.json", gates)
    (tmp / "README.md").write_text(card(merged_dir, formats, gates))
    write_manifest(tmp, stage="export-check", params={}, seed=None,
                   inputs={"merged": merged_dir, "eval": eval_dir, **{f"export:{k}": v for k, v in quantized.items()},
                           **{f"eval:{k}": v for k, v in quantized_evals.items()}},
                   extra={"metrics": metrics})
    publish(tmp, out)
    log.info("export check: %s", metrics)
    failed = {fmt: g for fmt, g in gates.items() if not g["passed"]}
    for fmt, g in failed.items():
        log.warning("export %s fails its release gate (export.max_loss): %s", fmt, "; ".join(g["failures"]))
    if failed and cfg.gate == "fail":
        raise GateFailed("; ".join(f"export {fmt} fails its release gate (export.max_loss): {'; '.join(g['failures'])}"
                                   for fmt, g in failed.items()) + f" (the check is in {out}; export.gate: record "
                                                                    "records a failure without stopping)")
    return metrics


# --- the release gate --------------------------------------------------------------------------------

class GateFailed(RuntimeError):
    """A quantized export lost more than export.max_loss allows, with export.gate: fail."""


def gate(reference: dict, got: dict, max_loss: dict[str, float]) -> dict:
    """Each gated metric's loss from the unquantized model (posttrain.stats.directions.loss) against
    its limit. A metric neither evaluation measures is recorded as unchecked (`passed: None`: a
    recipe overlays params.yaml's limits and may not evaluate them all); one that only one of the
    two has fails, since the gate cannot be checked."""
    checks, failures = {}, []
    for metric, limit in sorted(max_loss.items()):
        numbers = [isinstance(m.get(metric), (int, float)) for m in (reference, got)]
        if not all(numbers):
            checks[metric] = {"loss": None, "max_loss": limit, "passed": None if not any(numbers) else False}
            if any(numbers):
                failures.append(f"{metric} was evaluated for one of the two models only")
            continue
        lost = round(loss(metric, reference[metric], got[metric]), 6)
        checks[metric] = {"loss": lost, "max_loss": limit, "passed": lost <= limit}
        if lost > limit:
            unit = " (relative)" if metric in RELATIVE else ""
            failures.append(f"{metric} lost {lost:.3g}{unit}, at most {limit:g} allowed "
                            f"({reference[metric]:.3g} -> {got[metric]:.3g})")
    return {"passed": not failures, "failures": failures, "metrics": checks}


def card(merged_dir: Path, formats: dict[str, dict], gates: dict[str, dict]) -> str:
    """The check's model card: what each format costs and whether it passes its release gate."""
    lines = [f"# Quantized exports of {merged_dir.parent.name}", "",
             f"What each format costs against the unquantized model ({merged_dir}), on the same evaluation.", "",
             "| format | size ratio | arithmetic delta | perplexity change | release gate |",
             "|---|---:|---:|---:|---|"]
    for fmt, entry in formats.items():
        g = gates.get(fmt)
        verdict = "not set" if g is None else "pass" if g["passed"] else "**fail**: " + "; ".join(g["failures"])
        lines.append(f"| {fmt} | {entry['size_ratio']} | {entry.get('arithmetic_accuracy_delta', '')} | "
                     f"{entry.get('perplexity_change', '')} | {verdict} |")
    if gates:
        limits = next(iter(gates.values()))["metrics"]
        lines += ["", "Release gate (export.max_loss): " + ", ".join(
            f"{m} at most {c['max_loss']:g}" + (" (not evaluated, unchecked)" if c["passed"] is None else "")
            for m, c in limits.items()) + "."]
    return "\n".join(lines) + "\n"
