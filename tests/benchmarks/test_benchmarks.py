"""Every script under benchmarks/ runs here in a tiny mode, as a user runs it
(`.venv/bin/python benchmarks/X.py ARGS`, `.venv-export/bin/python` for GPTQ), on tiny random
models and tiny prepared data. The scripts import the pipeline's internals, and nothing else runs
them between two measurements: before this module a refactor broke several unseen (a stage's
signature, a moved helper), found only when someone next reproduced a figure of
benchmarks/RESULTS.md. Each test parses what its script prints and checks its contract (finite,
positive figures; shares that add up; answers and logits a change promises to keep identical),
not the figures themselves, which are a tiny model's.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_OVERLAY, bin_path, copy_pipeline, run, train_tiny_reward_model, write_jsonl

EXPORT_PYTHON = ROOT / ".venv-export" / "bin" / "python"
NUM = r"([-+]?(?:\d[\d,]*(?:\.\d+)?|nan|inf))"   # a printed figure, thousands separators allowed


def bench(script: str, *args, python=sys.executable) -> str:
    """`python benchmarks/SCRIPT.py ARGS` from the repository root; its stdout (fails on exit != 0)."""
    return run([str(python), f"benchmarks/{script}.py", *map(str, args)], ROOT).stdout


def figures(pattern: str, out: str) -> list[float]:
    """The figures of the first line matching `pattern` (NUM marks each)."""
    m = re.search(pattern.replace("NUM", NUM), out, re.M)
    assert m, f"no line matching {pattern!r} in:\n{out[-4000:]}"
    return _floats(m)


def all_figures(pattern: str, out: str) -> list[list[float]]:
    """The figures of every line matching `pattern`, one list per line."""
    return [_floats(m) for m in re.finditer(pattern.replace("NUM", NUM), out, re.M)]


def _floats(match: re.Match) -> list[float]:
    return [float(g.replace(",", "")) for g in match.groups()]


def positive(*xs: float) -> bool:
    return all(math.isfinite(x) and x > 0 for x in xs)


# --- tiny inputs, shared by the module's tests -----------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_base):
    """The tiny demo corpus (tests/data/tiny.yaml's sizes) prepared by the real data stages as the
    DAG prepares it (each source's subset from params), with the tiny base's tokenizer:
    {kind: folder} for eval (arithmetic, format, harmful, benign) and preference (helpful, safety)."""
    from posttrain.config import load_params
    from posttrain.stages import demo_data, prepare_data

    tmp = tmp_path_factory.mktemp("demo")
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY])
    demo_data.main(params, tmp / "results" / "demo_data")
    out = {}
    for kind in ("eval", "preference"):
        sources = params.data.sources.of(kind)
        for s in sources:  # the demo's relative paths, here; a source listed in params keeps its subset
            s.path = str(tmp / s.path)
        prepare_data.main(params, kind, [s.path for s in sources], tmp / kind, tokenizer_dir=tiny_base)
        out[kind] = tmp / kind
    return out


@pytest.fixture(scope="module")
def sum_prompts(tmp_path_factory, tiny_base):
    """Short arithmetic prompts (the RL benchmarks' own tiny set), prepared by the real stage."""
    from posttrain.config import load_params
    from posttrain.stages import prepare_data

    tmp = tmp_path_factory.mktemp("prompts")
    rows = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b), "subset": "arithmetic"}
            for a in range(2, 30) for b in (3, 5)]
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY])
    params.data.cleaning.near_dup = False
    prepare_data.main(params, "prompts", [str(write_jsonl(tmp / "p.jsonl", rows))], tmp / "prompts",
                      tokenizer_dir=tiny_base)
    return tmp / "prompts"


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_base):
    """A helpful reward model on the tiny base, trained a few steps by the real stage."""
    rows = [{"prompt": f"What is {a} plus 3?", "chosen": f"{a} plus 3 is {a + 3}.", "rejected": "No.",
             "subset": "helpful"} for a in range(2, 30)]
    return train_tiny_reward_model(tmp_path_factory.mktemp("rm"), tiny_base, rows)


@pytest.fixture(scope="module", autouse=True)
def _project_run(request, tmp_path_factory):
    """Starts making `ran_project` when the module starts, beside the first tests: most of its
    time is Snakemake's start-up (on a machine with SLURM's client tools and no controller, the
    SLURM plugin waits ~9 s for `scontrol` at every start; benchmarks/RESULTS.md)."""
    if not any("ran_project" in item.fixturenames for item in request.session.items):
        yield None
        return
    from posttrain import dag
    from posttrain.config import load_params

    dst = copy_pipeline(tmp_path_factory.mktemp("project") / "proj")
    run(["git", "init", "-q"], dst)
    run([bin_path("dvc"), "init", "-q"], dst)
    files = [str(dst / "params.yaml"), str(dst / "tiny.yaml")]
    real = ("demo_data", "base_model", "prepare_data_eval")   # made for real: results/data/eval and its inputs
    for stage in dag.stages(load_params(files), files):
        for out in stage.outs if stage.name not in real else ():
            (dst / out).mkdir(parents=True, exist_ok=True)
    snakemake = f"{shlex.quote(bin_path('snakemake'))} --configfile tiny.yaml"
    log = dst.parent / "snakemake.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(["bash", "-c", f"{snakemake} --cores 2 results/data/eval && "
                                 f"{snakemake} --cores 1 --touch --forceall"], cwd=dst, stdout=fh, stderr=fh,
                                start_new_session=True)
    yield dst, proc, log
    if proc.poll() is None:   # the module stopped early: end the run, Snakemake's jobs included
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def ran_project(_project_run):
    """A copy of the pipeline (git and DVC repositories, tests/data/tiny.yaml as tiny.yaml) whose
    DAG Snakemake takes as run: the demo data, the base model and the eval split made for real
    (their `benchmark:` files in logs/benchmarks), every other rule marked done by
    `snakemake --touch` (Snakemake's way to record a run without running it; their outputs are
    empty folders). What pipeline_overhead.py and stage_costs.py read are Snakemake's records."""
    dst, proc, log = _project_run
    assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    return dst


# --- one test per script, in alphabetical order -----------------------------------------------


def test_data_scale_prints_rows_per_second_and_flat_memory():
    out = bench("data_scale", "--sizes", "300", "3000", "--near-dup")
    rows = all_figures(r"^\s+NUM\s+NUM\s+NUM\s+NUM\s+NUM$", out)
    assert [r[0] for r in rows] == [300, 3000], out[-4000:]
    assert all(positive(*r) for r in rows), out[-4000:]
    (ratio,) = figures(r"largest vs second largest: NUM", out)
    assert 0.5 < ratio < 1.5, out  # the stage streams: memory does not grow with the rows


def test_generation_prints_throughput_by_batch_and_where_time_goes(chatty_model, demo):
    out = bench("generation", "--model", chatty_model, "--eval", demo["eval"], "--batch-sizes", 2, 4,
                "--new-tokens", 4)
    rows = all_figures(r"^\s+NUM\s+NUM\s+NUM\s+NUM$", out)
    # batch, s/step, tokens/s, GFLOP/s (a tiny model's steps and GFLOP/s may print as 0.0)
    assert [r[0] for r in rows] == [2, 4] and all(positive(r[2]) and min(r) >= 0 for r in rows), out[-4000:]
    assert positive(*figures(r"throughput batch 4 / batch 2: NUM", out)), out[-4000:]
    gflops, share = figures(r"prompts: NUM GFLOP/s; decoding at batch 2 runs at NUM of that", out)
    assert positive(gflops) and share >= 0, out[-4000:]
    shares = figures(r"matrix products NUM%, KV-cache concatenation NUM%, attention NUM%", out)
    assert all(0 <= s <= 100 for s in shares) and sum(shares) <= 100, out[-4000:]


def test_gptq_calibration_quantizes_in_both_dtypes_from_the_export_environment(tiny_base, sft_data):
    # GPTQModel's pins conflict with Snakemake's: it has an environment of its own, as the
    # export rules do (`make setup` builds it).
    assert EXPORT_PYTHON.exists(), f"{EXPORT_PYTHON} is missing: `make setup` builds the export environment"
    out = bench("gptq_calibration", "--model", tiny_base, "--calibration", sft_data, "--rows", 4,
                "--params", ROOT / "params.yaml", TINY_OVERLAY, python=EXPORT_PYTHON)
    (rows, tokens, _) = figures(r"^NUM calibration rows, NUM tokens, NUM threads", out)
    assert rows == 4 and tokens > 0, out[-4000:]
    for dtype in ("bfloat16", "float32"):
        product, seconds, loss_mean, loss_max = figures(
            rf"^{dtype}\s+product\s+NUM ms\s+quantize\s+NUM s\s+loss mean NUM max NUM", out)
        assert positive(product, seconds), out[-4000:]
        assert all(math.isfinite(x) and x >= 0 for x in (loss_mean, loss_max)), out[-4000:]
    assert positive(*figures(r"bfloat16 / float32: product NUMx, quantize NUMx", out)), out[-4000:]


def test_head_input_keeps_answers_and_logits_identical(tiny_base, demo):
    out = bench("head_input", "--model", tiny_base, "--eval", demo["eval"], "--params", ROOT / "params.yaml",
                TINY_OVERLAY, "--limit", 2, "--batch", 2, "--completion", 4)
    for label in ("sliced", "contiguous"):
        assert all(math.isfinite(x) and x >= 0 for x in figures(rf"^{label} .*?NUMs\s+NUMs\s+NUMs$", out)), out[-4000:]
    assert positive(*figures(r"^speed-up\s+NUMx\s+NUMx\s+NUMx$", out)), out[-4000:]
    same, n = figures(r"identical answers NUM/NUM; identical prefill logits: True", out)
    assert same == n == 8, out  # two prompts of each of the four eval subsets


def test_inference_dtype_prints_decoding_and_reward_scoring_in_both_dtypes(chatty_model, demo, reward_model):
    out = bench("inference_dtype", "--model", chatty_model, "--eval", demo["eval"], "--params", ROOT / "params.yaml",
                TINY_OVERLAY, "--limit", 2, "--reward", reward_model)
    seconds, speedup, same, n = figures(r"^float32\s+NUM\s+NUM\s+NUM/NUM$", out)
    assert n == 4 and same == n and speedup == 1.0, out  # float32 against itself
    seconds, speedup, same, n = figures(r"^bfloat16\s+NUM\s+NUM\s+NUM/NUM$", out)
    assert positive(speedup) and 0 <= same <= n == 4, out[-4000:]
    f32, bf16, ratio, mean, sd, spread = figures(
        r"float32 NUM s, bfloat16 NUM s \(NUMx\); bfloat16 - float32: mean NUM, sd NUM \(scores' sd NUM\)", out)
    assert positive(ratio, spread) and math.isfinite(mean) and sd >= 0, out[-4000:]


def test_perplexity_batched_equals_one_row_at_a_time(tiny_base, sft_data):
    out = bench("perplexity", "--model", tiny_base, "--heldout", sft_data, "--rows", 4, "--batch-sizes", 2, 4)
    _, ppl, tokens = figures(r"one at a time, every position:\s+NUM s\s+perplexity NUM \(NUM tokens\)", out)
    batched = all_figures(r"assistant_nll, batches of\s+NUM:\s+NUM s\s+perplexity NUM \(NUM tokens\)\s+"
                          r"speed-up NUMx", out)
    assert [b[0] for b in batched] == [2, 4] and positive(ppl, tokens), out[-4000:]
    for _, _, p, n, speedup in batched:   # the same tokens scored, the same perplexity
        assert n == tokens and p == pytest.approx(ppl, rel=1e-3) and positive(speedup), out[-4000:]


def test_pipeline_overhead_an_eval_only_change_reruns_no_training_stage(ran_project):
    overlay = (ran_project / "tiny.yaml").read_text()
    out = bench("pipeline_overhead", "--project", ran_project, "--repeat", 1, "--configfile", "tiny.yaml")
    assert "not up to date" not in out, out[-4000:]
    assert positive(*figures(r"^snakemake -n :\s+NUM s\s+\(target 3.0 s, ratio NUM\)", out)), out[-4000:]
    assert positive(*figures(r"^dvc status   :\s+NUM s\s+\(target 3.0 s, ratio NUM\)", out)), out[-4000:]
    rows, rows_after, jobs, training = figures(
        r"evaluate.perplexity_rows NUM -> NUM \(tiny.yaml\): NUM jobs would run; training stages NUM \(target 0\)", out)
    assert (rows, rows_after) == (4, 5) and jobs >= 1 and training == 0, out[-4000:]
    assert "others: evaluate_base, " in out and "report" in out, out[-4000:]
    assert (ran_project / "tiny.yaml").read_text() == overlay  # the edit is put back
    assert {"| base_model |", "| demo_data |", "| prepare_data_eval |"} <= set(re.findall(r"^\| \w+ \|", out, re.M))


def test_refilling_answers_as_fixed_batches_do(chatty_model, demo):
    out = bench("refilling", "--model", chatty_model, "--eval", demo["eval"], "--params", ROOT / "params.yaml",
                TINY_OVERLAY, "--places", 4, 8)
    prompts, tokens = figures(r"^NUM prompts, NUM answer tokens", out)
    assert prompts == 50 and tokens > 0, out  # tiny.yaml's eval sizes: 20 + 10 + 10 + 10
    rows = all_figures(r"^(?:fixed batches of 16|refilled, \d+ places)\s+NUM\s+NUM\s+NUM\s+NUM/NUM$", out)
    assert len(rows) == 3 and all(positive(*r[1:3]) and 0 <= r[3] <= r[4] == prompts for r in rows), out[-4000:]


def test_reward_batching_prints_both_runs_and_their_ratios(tiny_base, demo):
    out = bench("reward_batching", "--init", tiny_base, "--data", demo["preference"], "--aspect", "safety",
                "--params", TINY_OVERLAY)
    for grouped in ("False", "True"):
        tokens, seconds, steps, accuracy = figures(
            rf"group_by_length={grouped}: NUM batch tokens per epoch, stage NUM s, NUM steps, held-out accuracy NUM",
            out)
        assert positive(tokens, seconds) and steps == 4 and 0 <= accuracy <= 1, out  # tiny.yaml: 4 steps
    assert positive(*figures(r"ratios random / grouped: batch tokens NUM, stage time NUM", out)), out[-4000:]


def test_rl_micro_batches_prints_both_runs_and_their_ratios(tiny_base, sum_prompts):
    out = bench("rl_micro_batches", "--model", tiny_base, "--prompts", sum_prompts, "--steps", 1, "--generations", 2,
                "--prompts-per-step", 2, "--tokens", 4, "--micro-batches", 2)
    runs = all_figures(r"micro_batches=NUM: peak RSS NUM MB, NUM s .*, NUM steps$", out)
    assert [r[0] for r in runs] == [1, 2] and all(positive(*r[1:3]) and r[3] == 1 for r in runs), out[-4000:]
    assert positive(*figures(r"ratio micro / whole: peak RSS NUM, time NUM", out)), out[-4000:]


def test_rl_step_splits_grpo_and_ppo_steps_into_shares_that_add_up(tiny_base, sum_prompts, reward_model):
    out = bench("rl_step", "--model", tiny_base, "--prompts", sum_prompts, "--reward", reward_model, "--rows", 2,
                "--tokens", 4, "--steps", 1)
    unmerged, merged, ratio = figures(r"unmerged LoRA NUM s, merged NUM s, ratio NUM", out)
    assert positive(unmerged, merged, ratio), out[-4000:]
    grpo = figures(r"^GRPO, 1 steps .*, NUM s in all .*: generation NUM%, reward scoring NUM%, .* the rest NUM%", out)
    ppo = figures(r"^PPO, 1 steps .*, NUM s in all: generation NUM%, reward scoring NUM%, rollout log-probs \+ "
                  r"reference \+ values NUM%, PPO updates .* NUM%, the rest .* NUM%", out)
    for total, *shares in (grpo, ppo):  # each share rounded to a percent
        assert positive(total) and all(s >= 0 for s in shares) and abs(sum(shares) - 100) <= len(shares), out[-4000:]


def test_sampling_headroom_pass_at_k_bounds_the_mean_and_the_majority(chatty_model, demo):
    out = bench("sampling_headroom", "--model", chatty_model, "--eval", demo["eval"], "--samples", 2,
                "--temperatures", 0.8, "--max-new-tokens", 8, "--bare-sums", 2, "--threads", 1)
    problems, greedy = figures(r"^NUM arithmetic problems; greedy accuracy NUM", out)
    assert problems == 20 and 0 <= greedy <= 1, out[-4000:]
    temperature, mean, pass_k, maj_k, equations, _ = figures(r"^\s+NUM\s+NUM\s+NUM\s+NUM\s+NUM\s+NUM$", out)
    assert temperature == 0.8 and 0 <= mean <= pass_k <= 1 and 0 <= maj_k <= pass_k and 0 <= equations <= 1, out[-4000:]
    bare = all_figures(r"^\s+(?:one-digit|eval range) [+-]\s+NUM$", out)
    assert len(bare) == 4 and all(0 <= b[0] <= 1 for b in bare), out[-4000:]


def test_sft_throughput_prints_its_ratios(tiny_base, sft_data):
    out = bench("sft_throughput", "--base", tiny_base, "--data", sft_data, "--steps", 2)
    stage, bare, ratio = (figures(rf"^{label}:?\s+NUM", out)[0] for label in ("SFT stage  tokens/s",
                                                                              "bare loop  tokens/s", "stage / bare"))
    assert positive(stage, bare, ratio), out[-4000:]
    packed, padded = figures(r"packing \(bfd, padding-free\): NUM.*\n.*TRL default padding:\s+NUM", out)
    assert packed == 1.0 and 0 < padded <= 1, out  # padding-free packing: every token is a real one


def test_dpo_step_prints_both_settings_and_their_ratios(tiny_base, preference_data):
    out = bench("dpo_step", "--init", tiny_base, "--data", preference_data, "--steps", 2)
    rows = all_figures(r"^\s+NUM s/step\s+NUM pairs/s\s+NUM tokens/s\s+peak NUM GB$", out)
    assert len(rows) == 2 and all(positive(*r) for r in rows), out[-4000:]   # the stage, then TRL's example
    assert re.search(r"^stage .*LoRA r 16 .* of all layers", out, re.M), out[-4000:]      # the tiny model: 2 layers
    assert re.search(r"^trl_example +16 pairs/step, 1024 tokens, LoRA r 32 alpha 16 on q_proj,v_proj", out, re.M)
    speed, memory = figures(r"^stage / TRL example: tokens/s NUMx, peak memory NUMx$", out)
    assert positive(speed, memory), out[-4000:]


def test_stage_costs_prints_the_table_critical_path_and_a_what_if(ran_project):
    out = bench("stage_costs", ran_project / "logs" / "benchmarks", "--params", ran_project / "params.yaml",
                ran_project / "tiny.yaml", "--what-if", "prepare_data_eval=1")
    assert out.startswith("machine: "), out[-4000:]
    rules = re.findall(r"^\| (\w+) \| NUM \| NUM% \|".replace("NUM", NUM), out, re.M)
    assert sorted(r[0] for r in rules) == ["base_model", "demo_data", "prepare_data_eval"], out[-4000:]
    total, _ = figures(r"all 3 stages, one after another\*\* \| \*\*NUM\*\* \(NUM min\)", out)
    path_s, _ = figures(r"^critical path: NUM s \(NUM min\): ", out)
    replay, _ = figures(r"^replayed on 2 cores as Snakemake schedules it: NUM s \(NUM min\)", out)
    assert 0 < path_s <= replay <= total + 1, out  # wall times are printed rounded
    assert "prepare_data_eval (" in out.split("critical path:", 1)[1].splitlines()[0], out[-4000:]
    (_, _, what_if, _) = figures(r"^what if prepare_data_eval NUM -> NUM s: NUM s \(NUM min\)", out)
    assert what_if <= replay, out[-4000:]


def test_training_precision_prints_fp32_against_bf16(tiny_base, sft_data, sum_prompts, reward_model):
    out = bench("training_precision", "--model", tiny_base, "--base", tiny_base, "--data", sft_data, "--prompts",
                sum_prompts, "--reward", reward_model, "--steps", 1, "--tokens", 4)
    assert re.search(r"^CPU bfloat16 instructions: (yes|no)", out, re.M), out[-4000:]
    assert positive(*figures(r"SFT tokens/s: fp32 NUM, bf16 NUM, bf16/fp32 NUMx", out)), out[-4000:]
    for stage in ("GRPO", "PPO"):
        assert positive(*figures(rf"{stage} stage, 1 steps: fp32 NUM s, bf16 NUM s, speed-up NUMx", out)), out[-4000:]
