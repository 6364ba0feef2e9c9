"""Reference-overlap metrics of generated answers: BLEU (sacrebleu's corpus BLEU, its standard
13a tokenisation) and ROUGE-L F1 (Google's rouge-score, stemmed), each with the number of rows and
a 95 % interval from a seeded bootstrap over the rows (the rows are the sample, so the interval
says how much the figure would move on another draw of held-out rows)."""

from __future__ import annotations

import random
import statistics

BOOTSTRAP = 1000


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU, 0-100, one reference per row."""
    import sacrebleu

    return sacrebleu.corpus_bleu(hypotheses, [references]).score


def _bleu_of_rows(hypotheses: list[str], references: list[str]):
    """Corpus BLEU of any resample of the rows, from each row's n-gram counts, tokenised once
    (sacrebleu's own statistics: a bootstrap of 1,000 corpus_bleu calls re-tokenises every row each
    time, ~50x slower)."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    stats = metric._extract_corpus_statistics(hypotheses, [references])
    return lambda rows: metric._compute_score_from_stats([sum(col) for col in zip(*(stats[i] for i in rows))]).score


def rouge_l(hypotheses: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 per row, 0-1."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]


def overlap_metrics(hypotheses: list[str], references: list[str], seed: int = 0) -> dict:
    """{"bleu": {value, n, ci95}, "rouge_l": {value, n, ci95}} over aligned rows."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} answers for {len(references)} references")
    if not hypotheses:
        raise ValueError("no rows to score")
    n = len(hypotheses)
    rng = random.Random(seed)
    draws = [[rng.randrange(n) for _ in range(n)] for _ in range(BOOTSTRAP)]
    per_row = rouge_l(hypotheses, references)
    bleu_of = _bleu_of_rows(hypotheses, references)
    bleu_draws = sorted(bleu_of(d) for d in draws)
    rouge_draws = sorted(statistics.fmean(per_row[i] for i in d) for d in draws)
    return {"bleu": {"value": bleu_of(range(n)), "n": n, "ci95": _percentiles(bleu_draws)},
            "rouge_l": {"value": statistics.fmean(per_row), "n": n, "ci95": _percentiles(rouge_draws)}}


def _percentiles(sorted_draws: list[float]) -> list[float]:
    k = len(sorted_draws)
    return [sorted_draws[int(0.025 * (k - 1))], sorted_draws[int(0.975 * (k - 1))]]
