"""export-check: what quantization costs, against the unquantized model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from posttrain.core.manifest import read_manifest, require_manifest, write_json, write_manifest
from posttrain.core.publish import publish, staging
from posttrain.models.sources import weights_mb

log = logging.getLogger(__name__)


# --- quality cost ----------------------------------------------------------------------------------

# Evaluation metrics that describe the files rather than the model's quality.
NOT_COMPARED = {"parameters", "weights_mb"}


def check(merged_dir: Path, quantized: dict[str, Path], eval_dir: Path, quantized_evals: dict[str, Path],
          out: Path) -> dict:
    """Size ratio and metric deltas (quantized - unquantized) per format; perplexity also as a
    relative change, since its scale depends on the model."""
    require_manifest(merged_dir, "export-merge")
    reference = json.loads((eval_dir / "metrics.json").read_text())["metrics"]
    merged_mb = weights_mb(merged_dir)
    formats = {}
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
    metrics = {"merged_size_mb": round(merged_mb, 3), "reference": read_manifest(eval_dir).get("stage"),
               **{f"{k}_{fmt}": v for fmt, entry in formats.items() for k, v in entry.items()}}
    tmp = staging(out)
    write_json(tmp / "metrics.json", metrics)
    write_manifest(tmp, stage="export-check", params={}, seed=None,
                   inputs={"merged": merged_dir, "eval": eval_dir, **{f"export:{k}": v for k, v in quantized.items()},
                           **{f"eval:{k}": v for k, v in quantized_evals.items()}})
    publish(tmp, out)
    log.info("export check: %s", metrics)
    return metrics
