"""benchmarks/stage_costs.py's replay of a DAG on a few cores, as Snakemake schedules it."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import ROOT
from posttrain.dag.stage import ALL_CORES, Stage

spec = importlib.util.spec_from_file_location("stage_costs", ROOT / "benchmarks" / "stage_costs.py")
stage_costs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_costs)


def _stage(name, deps=(), cores_share=0.0, priority=0):
    return Stage(name, [name], [f"results/{d}" for d in deps], [f"results/{name}"], [], cores_share=cores_share,
                 priority=priority)


def test_the_replay_packs_one_core_rules_and_waits_for_a_rule_that_takes_every_core():
    walls = {"a": 10.0, "b": 10.0, "c": 10.0, "train": 30.0, "end": 5.0}
    # three one-core rules on two cores: two side by side, then the third
    table = [_stage("a"), _stage("b"), _stage("c")]
    assert stage_costs.scheduled(walls, table, 2) == 20.0
    # a rule on every core starts only when both are free, and its successor waits for it
    table = [_stage("a"), _stage("train", cores_share=ALL_CORES, priority=1), _stage("end", ["train"])]
    assert stage_costs.scheduled(walls, table, 2) == 40.0      # train 0-30, then a and end side by side
    # a lower-priority one-core rule first would delay the two-core one: priority decides
    table = [_stage("a", priority=1), _stage("train", cores_share=ALL_CORES), _stage("end", ["train"])]
    assert stage_costs.scheduled(walls, table, 2) == 45.0      # a 0-10 (one core idle), train 10-40, end


def test_what_if_replays_with_a_rule_shortened_and_names_unknown_rules():
    table = [_stage("a"), _stage("b", ["a"]), _stage("c")]
    rows = [{"rule": "a", "s": 10.0, "cpu_s": 10.0}, {"rule": "b", "s": 10.0, "cpu_s": 10.0},
            {"rule": "c", "s": 30.0, "cpu_s": 30.0}]
    text = stage_costs.path_summary(rows, table, 2, {"c": 5.0})
    assert "replayed on 2 cores as Snakemake schedules it: 30 s" in text
    assert "what if c 30 -> 5 s: 20 s (0.3 min)" in text
    with pytest.raises(ValueError, match=r"no rule \['nope'\]"):
        stage_costs.path_summary(rows, table, 2, {"nope": 1.0})
