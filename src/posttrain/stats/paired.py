"""Is model A's metric really different from model B's? Paired tests on the same prompts.

Every metric the report tests is a mean over per-prompt values that an evaluation stores in its
samples.jsonl, and every model answers the same prompts, so each comparison pairs a prompt's two
values and tests the differences:

- a 0/1 outcome (a sum answered right, a format followed, a request refused): McNemar's exact
  test, a two-sided binomial test on the discordant prompts (right in one model, wrong in the
  other); prompts both models get right, or both wrong, say nothing about which is better.
- a graded value (a reward model's score, a win against the reference counted 1 / 0.5 / 0, the
  setup and calculation rewards): the Wilcoxon signed-rank test on the per-prompt differences,
  zero differences left out (the `wilcox` convention; exact for small samples).

No correction for testing many metrics: the report lists every test with its p-value, and a
reader who looks for "any metric that moved" among a dozen should ask for p well under 0.05.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

ALPHA = 0.05
MCNEMAR, WILCOXON = "McNemar exact", "Wilcoxon signed-rank"

# The harness's task names (posttrain.inference.harness), the evaluation's safety subsets.
_ARITHMETIC, _FORMAT = "posttrain_arithmetic", "posttrain_format"


def _rm(aspect: str) -> Callable[[dict], float | None]:
    return lambda s: (s.get("rm_scores") or {}).get(aspect)


def _reward(name: str) -> Callable[[dict], float | None]:
    return lambda s: (s.get("arithmetic_rewards") or {}).get(name)


# metric -> (the task whose samples carry it, the per-prompt value, binary?)
PER_PROMPT: dict[str, tuple[str | None, Callable[[dict], float | bool | None], bool]] = {
    "arithmetic_accuracy": (_ARITHMETIC, lambda s: s.get("correct"), True),
    "arithmetic_setup_rate": (_ARITHMETIC, _reward("setup"), False),
    "arithmetic_calculation_rate": (_ARITHMETIC, _reward("calculation"), False),
    "format_accuracy": (_FORMAT, lambda s: s.get("correct"), True),
    "harmful_refusal_rate": ("harmful", lambda s: s.get("refused"), True),
    "benign_overrefusal_rate": ("benign", lambda s: s.get("refused"), True),
    "win_rate_vs_reference": (None, lambda s: s.get("win_vs_reference"), False),
}


@dataclass(frozen=True)
class Comparison:
    """`model` against `baseline` on one metric, over the `n` prompts both answered."""
    model: str
    baseline: str
    metric: str
    n: int
    baseline_value: float
    model_value: float
    test: str
    p: float
    # the prompts the difference rests on: discordant pairs (McNemar) or non-zero differences
    informative: int

    @property
    def delta(self) -> float:
        return self.model_value - self.baseline_value

    def verdict(self, direction: str | None) -> str:
        """`better` / `worse` (by the metric's direction) at p < ALPHA, else `within noise`."""
        if self.p >= ALPHA or self.delta == 0:
            return "within noise"
        up = self.delta > 0
        if direction is None:
            return "higher" if up else "lower"
        return "better" if up == (direction == "higher") else "worse"

    def record(self, direction: str | None) -> dict:
        return {**asdict(self), "delta": round(self.delta, 6), "verdict": self.verdict(direction)}


def testable(metric: str) -> bool:
    """Whether an evaluation stores the metric's per-prompt values: those above, and every
    `<aspect>_rm_score`."""
    return metric in PER_PROMPT or metric.endswith(RM_SCORE)


RM_SCORE = "_rm_score"


def _spec(metric: str):
    if metric in PER_PROMPT:
        return PER_PROMPT[metric]
    return None, _rm(metric.removesuffix(RM_SCORE)), False


def per_prompt(samples: Iterable[dict], metric: str) -> dict[tuple, float | bool]:
    """The metric's value for each prompt, keyed by (task, id or prompt)."""
    task, value, _ = _spec(metric)
    out = {}
    for s in samples:
        if task is not None and s.get("task") != task:
            continue
        v = value(s)
        if v is not None:
            out[(s.get("task"), s.get("id") or s.get("prompt"))] = v
    return out


def compare(model: str, model_samples: list[dict], baseline: str, baseline_samples: list[dict],
            metric: str) -> Comparison | None:
    """The paired test of one metric, or None when the two models share no scored prompt."""
    a, b = per_prompt(model_samples, metric), per_prompt(baseline_samples, metric)
    keys = sorted(set(a) & set(b), key=repr)
    if not keys:
        return None
    x, y = [float(a[k]) for k in keys], [float(b[k]) for k in keys]
    if _spec(metric)[2]:
        test, p, informative = MCNEMAR, *mcnemar_exact(x, y)
    else:
        test, p, informative = WILCOXON, *signed_rank(x, y)
    return Comparison(model, baseline, metric, len(keys), round(sum(y) / len(y), 6), round(sum(x) / len(x), 6),
                      test, round(p, 6), informative)


def mcnemar_exact(x: list[float], y: list[float]) -> tuple[float, int]:
    """Two-sided p of McNemar's exact test on paired 0/1 outcomes, and the discordant pairs."""
    from scipy.stats import binomtest

    up = sum(1 for i, j in zip(x, y) if i and not j)
    down = sum(1 for i, j in zip(x, y) if j and not i)
    if up + down == 0:
        return 1.0, 0
    return float(binomtest(up, up + down, 0.5).pvalue), up + down


def signed_rank(x: list[float], y: list[float]) -> tuple[float, int]:
    """Two-sided p of the Wilcoxon signed-rank test on x - y (zeros dropped), and the non-zero pairs."""
    from scipy.stats import wilcoxon

    diffs = [round(i - j, 9) for i, j in zip(x, y)]
    nonzero = [d for d in diffs if d != 0]
    if not nonzero:
        return 1.0, 0
    return float(wilcoxon(nonzero, zero_method="wilcox").pvalue), len(nonzero)
