"""Which way each evaluation metric is better: the report's order and verdicts and the export
release gate (posttrain.stages.export.check) read it."""

from __future__ import annotations

# Canonical metrics in report order, with the direction that is better.
BETTER = {
    "arithmetic_accuracy": "higher", "arithmetic_accuracy_flexible": "higher",
    "arithmetic_setup_rate": "higher", "arithmetic_calculation_rate": "higher", "format_accuracy": "higher",
    "gsm8k_exact_match": "higher", "gsm8k_exact_match_flexible": "higher",
    "harmful_refusal_rate": "higher", "benign_overrefusal_rate": "lower", "perplexity": "lower",
    "helpful_rm_score": "higher", "helpful_audit_rm_score": "higher", "safety_rm_score": "higher",
    "win_rate_vs_reference": "higher",
}
# Metrics whose scale depends on the model: a loss in them is a relative change (0.1 = 10 %).
RELATIVE = {"perplexity"}


def loss(metric: str, reference: float, value: float) -> float:
    """How much worse `value` is than `reference` on `metric` (negative: better): a drop where
    higher is better, a rise where lower is better, relative for RELATIVE metrics."""
    worse = reference - value if BETTER[metric] == "higher" else value - reference
    return worse / reference if metric in RELATIVE else worse
