"""Benchmark scripts run in a tiny mode, so a refactor that breaks one fails here rather than when
someone next reproduces a figure of benchmarks/RESULTS.md (sft_throughput.py once broke unseen)."""

import re

from conftest import ROOT, bin_path, run


def test_data_scale_prints_rows_per_second_and_flat_memory():
    res = run([bin_path("python"), "benchmarks/data_scale.py", "--sizes", "300", "3000", "--near-dup"], ROOT)
    rows = re.findall(r"^\s+([\d,]+)\s+[\d.]+\s+([\d,]+)\s+(\d+)\s+([\d.]+)$", res.stdout, re.M)
    assert [r[0] for r in rows] == ["300", "3,000"], res.stdout
    ratio = float(re.search(r"largest vs second largest: ([\d.]+)", res.stdout).group(1))
    assert 0.5 < ratio < 1.5


def test_sft_throughput_prints_its_ratios():
    res = run([bin_path("python"), "benchmarks/sft_throughput.py", "--steps", "3"], ROOT)
    assert re.search(r"stage / bare:\s+[\d.]+", res.stdout), res.stdout
    assert re.search(r"real-token share, packing .*: 1\.000", res.stdout), res.stdout


def test_rl_micro_batches_prints_its_ratios():
    res = run([bin_path("python"), "benchmarks/rl_micro_batches.py", "--steps", "1", "--generations", "2",
               "--prompts-per-step", "2", "--tokens", "8", "--micro-batches", "2"], ROOT)
    assert re.search(r"ratio micro / whole: peak RSS [\d.]+, time [\d.]+", res.stdout), res.stdout


def test_reward_batching_prints_its_ratios():
    res = run([bin_path("python"), "benchmarks/reward_batching.py"], ROOT)
    assert re.search(r"ratios random / grouped: batch tokens [\d.]+, stage time [\d.]+", res.stdout), res.stdout


def test_training_precision_prints_its_ratios():
    res = run([bin_path("python"), "benchmarks/training_precision.py", "--steps", "1", "--tokens", "8"], ROOT)
    assert re.search(r"SFT tokens/s: fp32 [\d.]+, bf16 [\d.]+, bf16/fp32 [\d.]+x", res.stdout), res.stdout
    for stage in ("GRPO", "PPO"):
        assert re.search(rf"{stage} stage, 1 steps: fp32 [\d.]+ s, bf16 [\d.]+ s, speed-up [\d.]+x", res.stdout), \
            res.stdout
