"""BLEU and ROUGE-L of answers against references, with their bootstrap intervals."""

import pytest

from posttrain.stats.overlap import bleu, overlap_metrics, rouge_l

REFERENCES = [f"The sum of {a} and {a + 4} is {2 * a + 4}, so the answer is {2 * a + 4}." for a in range(3, 23)]


def test_identical_answers_score_full_marks_and_unrelated_ones_nearly_none():
    same = overlap_metrics(REFERENCES, REFERENCES)
    assert same["bleu"]["value"] == pytest.approx(100) and same["rouge_l"]["value"] == pytest.approx(1)
    assert same["bleu"]["n"] == same["rouge_l"]["n"] == 20
    other = overlap_metrics(["Bananas grow in warm places."] * 20, REFERENCES)
    assert other["bleu"]["value"] < 5 and other["rouge_l"]["value"] < 0.15


def test_a_partly_right_answer_sits_between_with_an_interval_around_it():
    answers = [r if i % 2 else r.replace("so the answer is", "which means") for i, r in enumerate(REFERENCES)]
    m = overlap_metrics(answers, REFERENCES)
    for name in ("bleu", "rouge_l"):
        low, high = m[name]["ci95"]
        assert low <= m[name]["value"] <= high and low < high
    assert 30 < m["bleu"]["value"] < 100 and 0.5 < m["rouge_l"]["value"] < 1
    assert overlap_metrics(answers, REFERENCES) == m                          # a seeded bootstrap
    assert m["bleu"]["value"] == pytest.approx(bleu(answers, REFERENCES))     # sacrebleu's corpus BLEU


def test_known_values_and_misaligned_rows():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)
    assert rouge_l(["the cat sat"], ["the cat sat on the mat"])[0] == pytest.approx(2 * 1 * 0.5 / 1.5)
    with pytest.raises(ValueError, match="3 answers for 2 references"):
        overlap_metrics(["a", "b", "c"], ["a", "b"])
