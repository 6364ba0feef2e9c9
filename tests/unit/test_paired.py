"""The report's paired tests: McNemar's exact test and the Wilcoxon signed-rank test on the
per-prompt values an evaluation stores, and which prompts pair."""

from __future__ import annotations

import pytest
from scipy.stats import wilcoxon

from posttrain.stats import paired


def _arith(i: int, correct: bool, setup: float = 1.0) -> dict:
    return {"task": "posttrain_arithmetic", "id": f"a{i}", "correct": correct,
            "arithmetic_rewards": {"setup": setup, "calculation": None}}


def test_mcnemar_counts_only_the_discordant_prompts():
    # 10 prompts only the model gets right, 0 only the baseline: p = 2 x 0.5^10
    p, informative = paired.mcnemar_exact([1] * 10 + [1] * 50 + [0] * 40, [0] * 10 + [1] * 50 + [0] * 40)
    assert informative == 10
    assert p == pytest.approx(2 * 0.5 ** 10)
    assert paired.mcnemar_exact([1, 0, 1], [0, 1, 1]) == (1.0, 2)
    assert paired.mcnemar_exact([1, 1], [1, 1]) == (1.0, 0)


def test_signed_rank_drops_ties_and_matches_scipy():
    x, y = [0.5, 1.0, 0.2, 0.9, 0.4, 0.7, 0.3], [0.1, 0.2, 0.2, 0.1, 0.3, 0.1, 0.0]
    p, informative = paired.signed_rank(x, y)
    assert informative == 6
    assert p == pytest.approx(wilcoxon([a - b for a, b in zip(x, y) if a != b]).pvalue)
    assert paired.signed_rank([0.3, 0.3], [0.3, 0.3]) == (1.0, 0)


def test_compare_pairs_prompts_by_task_and_id():
    model = [_arith(i, True) for i in range(12)] + [{"task": "harmful", "id": "h1", "refused": True}]
    baseline = [_arith(i, False) for i in range(12)] + [_arith(99, True)]   # a99: the model has no answer
    c = paired.compare("rl", model, "sft", baseline, "arithmetic_accuracy")
    assert (c.n, c.informative, c.model_value, c.baseline_value) == (12, 12, 1.0, 0.0)
    assert c.p < 0.001 and c.test == paired.MCNEMAR
    assert c.verdict("higher") == "better" and c.verdict("lower") == "worse"
    assert paired.compare("rl", model, "sft", baseline, "harmful_refusal_rate") is None   # no shared prompt
    setup = paired.compare("rl", model, "sft", baseline, "arithmetic_setup_rate")
    assert setup.test == paired.WILCOXON and setup.verdict("higher") == "within noise"   # equal everywhere
    assert paired.compare("rl", model, "sft", baseline, "arithmetic_calculation_rate") is None   # all None


def test_a_small_difference_is_within_noise():
    model = [_arith(i, i < 7) for i in range(40)]
    baseline = [_arith(i, i < 4) for i in range(40)]    # 7/40 against 4/40: 3 discordant prompts
    c = paired.compare("rl", model, "sft", baseline, "arithmetic_accuracy")
    assert c.delta == pytest.approx(0.075) and c.p == 0.25
    assert c.record("higher")["verdict"] == "within noise"
