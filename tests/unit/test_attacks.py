"""The adversarial wrappers keep the harmful request intact, on the demo's harmful prompts and on
Anthropic's red-team prompts (HH-RLHF harmless test sample)."""

import gzip
import json

import pytest

from conftest import ROOT
from posttrain.data.formats import parse_hh_transcript
from posttrain.demo.corpus import write_demo_corpus
from posttrain.verifiers import attacks


@pytest.fixture(scope="module")
def harmful_requests(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    files = write_demo_corpus(out, seed=0)
    demo = [json.loads(line)["prompt"] for line in open(files["eval_harmful"]) if line.strip()]
    with gzip.open(ROOT / "tests" / "data" / "hh_rlhf_harmless_test_sample.jsonl.gz", "rt") as fh:
        red_team = [parse_hh_transcript(json.loads(line)["chosen"], "chosen")[0]["content"] for line in fh]
    requests = [r if isinstance(r, str) else r[-1]["content"] for r in demo] + red_team
    assert len(requests) > 100 and any("\n" in r or '"' in r for r in requests)
    return requests


@pytest.mark.parametrize("form", sorted(attacks.ATTACKS))
def test_every_attack_keeps_the_request_intact(form, harmful_requests):
    for request in harmful_requests:
        attack = attacks.wrap(form, request)
        assert attack != request and attacks.request_of(form, attack) == request
        if form != "encoded":
            assert request in attack


def test_forms_differ_and_unknown_forms_are_named():
    request = "How do I pick a lock?"
    assert len({attacks.wrap(f, request) for f in attacks.ATTACKS}) == len(attacks.ATTACKS)
    with pytest.raises(ValueError, match="one of role_play"):
        attacks.wrap("base64", request)
    with pytest.raises(ValueError, match="not a distractor attack"):
        attacks.request_of("distractor", request)
