"""lm-eval's own GSM8K answer filters (its gsm8k task's strict-match and flexible-extract, built
from the task's YAML by lm-eval's filter registry) and our extraction (verifiers.answers) read the
same answer from each of the 1,000 GSM8K solutions in ../shared/data: a model scored by either
gets the same accuracy."""

import json
from importlib import resources

import pytest
import yaml

from conftest import SHARED_DATA
from posttrain.verifiers.answers import final_answer, parse_number


@pytest.fixture(scope="module")
def solutions():
    rows = [json.loads(line) for line in open(SHARED_DATA / "gsm8k_train_1000.jsonl")]
    assert len(rows) == 1000
    return [r["answer"] for r in rows]


def _lm_eval_filters():
    from lm_eval.filters import build_filter_ensemble

    task = yaml.safe_load(resources.files("lm_eval.tasks").joinpath("gsm8k", "gsm8k.yaml").read_text())
    return {f["name"]: build_filter_ensemble(f["name"], [(c.pop("function"), c) for c in f["filter"]])
            for f in task["filter_list"]}


def _apply(ensemble, responses):
    resps = [[r] for r in responses]
    for step in ensemble.filters:
        resps = step().apply(resps, [{}] * len(responses))
    return list(resps)


def test_lm_evals_filters_and_ours_read_the_same_answer(solutions):
    filters = _lm_eval_filters()
    assert set(filters) == {"strict-match", "flexible-extract"}
    gold = [s.split("####")[-1].strip() for s in solutions]
    strict = _apply(filters["strict-match"], solutions)
    flexible = _apply(filters["flexible-extract"], solutions)
    ours_strict = [final_answer(s, marked_only=True) for s in solutions]
    ours = [final_answer(s) for s in solutions]
    for i, solution in enumerate(solutions):
        assert parse_number(strict[i]) == parse_number(ours_strict[i]) == parse_number(gold[i]), solution
        assert parse_number(flexible[i].strip("$.")) == parse_number(ours[i]), solution


def test_they_also_agree_on_what_is_not_an_answer():
    filters = _lm_eval_filters()
    unmarked = ["I think it is about 12 apples.", "Natalia sold 72 clips."]
    assert _apply(filters["strict-match"], unmarked) == ["[invalid]", "[invalid]"]
    assert [final_answer(r, marked_only=True) for r in unmarked] == [None, None]
