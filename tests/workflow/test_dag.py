"""The DAG is declared once: Snakemake and DVC must see the same stages, edges and commands."""

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, bin_path, read_jsonl, run
from posttrain.config import load_params


def snakemake_jobs(cwd, *args):
    """{rule: shell command} and the rule graph's edges, from Snakemake itself."""
    out = run([bin_path("snakemake"), "-n", "-p", "--forceall", *args], cwd).stdout
    jobs = {k: v for k, v in re.findall(r"^rule (\w+):\n(?:.*\n)*?Shell command: (.+)$", out, re.M) if k != "all"}
    dot = run([bin_path("snakemake"), "--rulegraph", "--forceall", *args], cwd).stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    edges = {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M) if names[b] != "all"}
    return jobs, edges


def dvc_jobs(cwd):
    stages = yaml.safe_load((Path(cwd) / "dvc.yaml").read_text())["stages"]
    dot = run([bin_path("dvc"), "dag", "--dot"], cwd).stdout
    edges = set(re.findall(r'"(\w+)" -> "(\w+)"', dot))
    return {name: s["cmd"] for name, s in stages.items()}, edges


def test_committed_dvc_yaml_matches_the_stage_table():
    res = run([bin_path("posttrain"), "dag", "--check"], ROOT, check=False)
    assert res.returncode == 0, res.stderr


def test_snakemake_and_dvc_agree_on_stages_edges_and_commands(project):
    run([bin_path("dvc"), "init", "-q"], project)
    smk_jobs, smk_edges = snakemake_jobs(project)
    dvc_cmds, dvc_edges = dvc_jobs(project)
    assert smk_jobs == dvc_cmds
    assert smk_edges == dvc_edges
    assert ("prepare_data_eval", "prepare_data_sft") in smk_edges  # decontamination needs eval first


def test_drift_is_detected(project):
    text = (project / "dvc.yaml").read_text().replace("--kind sft", "--kind sft --extra")
    (project / "dvc.yaml").write_text(text)
    res = run([bin_path("posttrain"), "dag", "--check"], project, check=False)
    assert res.returncode == 1 and "out of date" in res.stderr


def test_recipe_overlay_reaches_both_tools(project):
    recipe = "recipes/qwen3-30b-a3b.yaml"
    jobs, _ = snakemake_jobs(project, "--configfile", recipe)
    assert "demo_data" not in jobs  # hub sources: no demo corpus
    assert jobs["base_model"] == f"posttrain base-model --out results/base --params params.yaml --params {recipe}"
    assert "'hf:openai/gsm8k?name=main&split=test&revision=740312add88f781978c0658806c59bc2815b9866'" in \
        jobs["prepare_data_eval"]
    run([bin_path("posttrain"), "dag", "--write", "--recipe", recipe], project)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert stages["base_model"]["params"] == ["model", {recipe: ["model"]}]
    assert {name: s["cmd"] for name, s in stages.items()} == jobs


def test_quick_demo_keeps_one_rl_stage_and_one_export_and_changes_only_what_it_sets(project):
    """`make demo-quick` runs a subset of `make demo`'s jobs: the first RL stage, its GGUF export and
    no distillation. An overlay reaches only the commands of the stages that read a section it sets
    (`rl`, `export`): the others stay the same, so Snakemake and DVC keep their results when a user
    goes from one demo to the other."""
    recipe = "recipes/demo-quick.yaml"
    full, full_edges = snakemake_jobs(project)
    quick, quick_edges = snakemake_jobs(project, "--configfile", recipe)
    left_out = {"student_base", "distill_samples", "distill", "distill_baseline", "evaluate_distilled",
                "evaluate_student_sft", "rl_safety", "rl_reasoning", "rl_zero", "evaluate_safety",
                "evaluate_reasoning", "evaluate_rl_zero", "export_gptq", "evaluate_reasoning_gptq",
                "evaluate_reasoning_gguf", "preference_dpo", "evaluate_dpo"}
    renamed = {"evaluate_helpfulness_gguf"}    # the export is of the last RL stage the DAG has
    assert set(full) - set(quick) == left_out and set(quick) - set(full) == renamed
    with_overlay = {name for name, cmd in quick.items() if cmd.endswith(f" --params {recipe}")}
    assert with_overlay == {"rl_helpfulness", "export_merge", "export_gguf", "export_check"}   # + its release gate
    # the quick demo's PPO stage is the full demo's first stage, to the letter
    assert quick["rl_helpfulness"].removesuffix(f" --params params.yaml --params {recipe}") == full["rl_helpfulness"]
    both = [load_params([project / "params.yaml", *extra]).rl.stages[0] for extra in ([], [project / recipe])]
    assert both[0] == both[1]
    for name, cmd in quick.items():
        # the report and the export check list the models they compare
        if name not in with_overlay | renamed | {"report", "export_check"}:
            assert cmd == full[name]
    # no GPTQ model: every job runs in the main environment (`make demo-quick` sets up no other)
    assert [name for name, cmd in quick.items() if cmd.startswith(".venv-export/")] == []
    assert full["evaluate_reasoning_gptq"].startswith(".venv-export/bin/posttrain evaluate")
    kept = {(a, b) for a, b in full_edges if a not in left_out and b not in left_out}
    assert {(a, b) for a, b in quick_edges if renamed.isdisjoint((a, b))} - kept == {
        ("rl_helpfulness", "export_merge"),
        ("evaluate_helpfulness", "export_check")}
    assert ("export_check", "report") in quick_edges   # the report marks exports failing their release gate
    # DVC tracks the overlay's params for those stages only
    run([bin_path("posttrain"), "dag", "--write", "--recipe", recipe], project)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert stages["export_merge"]["params"] == ["export", {recipe: ["export"]}]
    assert stages["sft"]["params"] == ["sft"] and stages["sft"]["cmd"] == full["sft"]


def test_rl_stages_in_params_grow_both_dags(project):
    """Adding an RL stage is a params change only: both tools get a stage and its evaluation."""
    stages = yaml.safe_load((project / "tiny.yaml").read_text())["rl"]["stages"]
    extra = {**stages[-1], "name": "polish", "init": "helpfulness"}
    (project / "more.yaml").write_text(yaml.safe_dump({"rl": {"stages": [*stages, extra]}}))
    jobs, edges = snakemake_jobs(project, "--configfile", "tiny.yaml", "more.yaml")
    assert "rl_polish" in jobs and "evaluate_polish" in jobs
    assert ("rl_helpfulness", "rl_polish") in edges and ("rl_polish", "evaluate_polish") in edges
    run([bin_path("dvc"), "init", "-q"], project)
    run([bin_path("posttrain"), "dag", "--write", "--recipe", "tiny.yaml", "--recipe", "more.yaml"], project)
    dvc_cmds, dvc_edges = dvc_jobs(project)
    assert dvc_cmds["rl_polish"] == jobs["rl_polish"] and ("rl_helpfulness", "rl_polish") in dvc_edges


def test_a_typo_fails_snakemake_dry_run_and_dvc_repro_naming_the_key(project):
    typo = project / "typo.yaml"
    typo.write_text("data:\n  cleaning:\n    near_dup_treshold: 0.5\n")
    res = run([bin_path("snakemake"), "-n", "--configfile", "typo.yaml"], project, check=False)
    assert res.returncode != 0
    assert "unknown key 'data.cleaning.near_dup_treshold' in typo.yaml" in res.stdout + res.stderr

    params = (project / "params.yaml").read_text().replace("  revision: null", "  revison: null")
    (project / "params.yaml").write_text(params)
    run([bin_path("dvc"), "init", "-q"], project)
    res = run([bin_path("dvc"), "repro"], project, check=False)
    assert res.returncode != 0
    assert "unknown key 'model.revison'" in res.stdout + res.stderr
    assert not (project / "results").exists()  # nothing ran


# What .dvcignore keeps out of DVC's hashes (wall-clock facts: run records, GPTQModel's timed log,
# the report's timing page) and the tools' own bookkeeping (.gitignore from DVC, Snakemake's
# timestamps). Everything else two runs of the same inputs write is the same, byte for byte.
UNHASHED = {"run.json", "quant_log.csv", "timing.md", "timing.html", ".gitignore", ".snakemake_timestamp"}


def _tree_hashes(folder, skip=()):
    """sha256 of every artifact file under folder that DVC hashes (but the names in `skip`)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name not in UNHASHED | set(skip)}


def test_dvcignore_leaves_out_exactly_the_wall_clock_files_and_snakemakes_markers():
    patterns = [line for line in (ROOT / ".dvcignore").read_text().splitlines() if line and not line.startswith("#")]
    assert {Path(p).name for p in patterns} == UNHASHED - {".gitignore"}


def test_committed_dvc_lock_has_the_stages_of_dvc_yaml():
    """The baseline (dvc.lock, from `make demo`) is kept in step with the DAG: after a change to
    the stages, `make demo` and commit its dvc.lock."""
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    locked = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    assert set(declared) == set(locked), (f"dvc.lock lacks {sorted(set(declared) - set(locked))} and has "
                                          f"{sorted(set(locked) - set(declared))}: run `make demo` and commit dvc.lock")
    for name, stage in declared.items():
        lock = locked[name]
        assert lock["cmd"] == stage["cmd"], name
        assert sorted(d["path"] for d in lock.get("deps", [])) == sorted(stage.get("deps", [])), name   # DVC sorts
        assert sorted(o["path"] for o in lock["outs"]) == sorted(o if isinstance(o, str) else next(iter(o))
                                                                 for o in stage["outs"]), name
        assert set(lock.get("params", {}).get("params.yaml", {})) == set(stage.get("params", [])), name


@pytest.mark.slow
def test_tiny_dag_end_to_end_with_snakemake_then_dvc_gives_the_same_artifacts(project, tmp_path):
    # Snakemake, with a fake secret in the environment that no artifact or log may contain
    planted = "hf_PlantedFakeTokenThatMustNeverLeak0123456789"
    # and an overlay that sends every stage to MLflow (a local SQLite store)
    (project / "tracking.yaml").write_text('tracking: {backend: mlflow, uri: "sqlite:///mlruns.db"}\n')
    first = run([bin_path("snakemake"), "--cores", "2", "--configfile", "tiny.yaml", "tracking.yaml"], project,
                env={"HF_TOKEN": planted, "HUGGING_FACE_HUB_TOKEN": planted})
    results = project / "results"
    assert planted not in first.stdout + first.stderr
    written = [p for d in ("results", "logs", ".snakemake/log") for p in (project / d).rglob("*") if p.is_file()]
    assert len(written) > 100 and not [p for p in written if planted.encode() in p.read_bytes()]
    for out in ("demo_data", "base", "data/eval", "data/sft", "data/preference", "data/prompts", "sft",
                "reward/helpful", "reward/safety", "reward/helpful_audit", "rl/helpfulness", "rl/reasoning", "rl_zero",
                "preference/dpo", "distill/student_base", "distill/samples", "distill/student", "distill/student_sft",
                "export/reasoning/merged", "export/reasoning/gptq", "export/reasoning/gguf",
                "export/reasoning/gguf_lora", "export/reasoning/check"):
        assert (results / out / "manifest.json").is_file(), out
    # the reasoning stage starts from the helpfulness stage's model
    rl_manifest = json.loads((results / "rl/reasoning/manifest.json").read_text())
    assert rl_manifest["inputs"]["init"]["path"].endswith("results/rl/helpfulness")
    # the log says where each rule is, in whole lines (no progress bars' carriage returns)
    log = first.stdout + first.stderr
    assert re.search(r"^sft: step 6 of 6 \(100%\), [0-9.]+ (s/step|steps/s), done in ", log, re.M)
    assert re.search(r"^reward-helpful_audit: step \d+ of \d+ ", log, re.M)
    assert re.search(r"^safety: answer \d+ of \d+ ", log, re.M)
    # the report tests each model against the one it was made from, with the audit reward model
    tests = json.loads((results / "report/significance.json").read_text())
    pairs = {(t["model"], t["baseline"]) for t in tests}
    assert {("sft", "base"), ("helpfulness", "sft"), ("reasoning", "helpfulness"), ("rl_zero", "base"),
            ("distilled", "student_sft"), ("reasoning_gguf_lora", "reasoning"), ("dpo", "sft"),
            ("dpo", "helpfulness")} <= pairs
    assert {"helpful_audit_rm_score", "harmful_refusal_rate"} <= {t["metric"] for t in tests}
    assert all(0 <= t["p"] <= 1 and t["n"] > 0 for t in tests)
    md = (results / "report/report.md").read_text()
    assert "## Is it more than noise?" in md and "[timing.md](timing.md)" in md.splitlines()[2]
    timing = (results / "report/timing.md").read_text()
    assert timing.splitlines()[2].startswith("Timing: ") and "| sft | " in timing
    assert json.loads((results / "sft/run.json").read_text())["tokens_per_second"] > 0
    for kind in ("sft", "preference", "prompts", "eval"):
        report = yaml.safe_load((results / "data" / kind / "report.json").read_text())
        assert report["rows_in"] == report["rows_out"] + sum(report["dropped"].values())
        assert report["rows_out"] > 0
    sft_report = yaml.safe_load((results / "data/sft/report.json").read_text())
    assert sft_report["dropped"].get("malformed_json") == 1  # the demo's deliberate bad line
    assert sft_report["dropped"].get("duplicate", 0) >= 2
    assert sft_report["modified"].get("pii_scrubbed", 0) >= 1
    # eval and training are disjoint: no eval prompt text appears in any training row
    eval_prompts = {r["prompt"][-1]["content"] for r in read_jsonl(results / "data/eval/test.jsonl")}
    train_text = (results / "data/sft/train.jsonl").read_text()
    assert not any(p in train_text for p in eval_prompts)
    # every rule left its wall time and peak memory (Snakemake's benchmark files), gathered in one table
    table = run([bin_path("python"), str(ROOT / "benchmarks/stage_costs.py"), "logs/benchmarks",
                 "--params", "params.yaml", "tiny.yaml"], project).stdout
    assert "| sft |" in table and "| report |" in table and "all " in table
    assert table.startswith("machine: ") and " cores" in table.splitlines()[0]  # figures name their machine
    # the longest chain of the DAG: from a stage with no inputs from others, through SFT, to one
    # that nothing reads (the report or the export check, whichever ended last)
    chain = table.split("critical path: ")[1].splitlines()[0].split(": ", 1)[1]
    assert chain.startswith(("demo_data", "base_model")) and " -> sft (" in chain and chain.endswith(")")
    assert chain.split(" -> ")[-1].split(" (")[0] in ("report", "export_check")
    # every stage was an MLflow run: trainers with their curves, evaluations and export checks with
    # their metrics, each tagged with its inputs' hashes (the GPTQ export runs in .venv-export, which
    # has no MLflow: it says so and runs untracked)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project}/mlruns.db")
    tracked = {r.info.run_name.split("@")[0]: r for r in client.search_runs(
        [client.get_experiment_by_name("posttrain").experiment_id], max_results=500)}
    assert {"sft", "reward/helpful", "rl/helpfulness", "eval/sft", "export/reasoning/check"} <= set(tracked)
    assert len(client.get_metric_history(tracked["sft"].info.run_id, "loss")) >= 2
    assert "arithmetic_accuracy" in tracked["eval/sft"].data.metrics
    assert "merged_size_mb" in tracked["export/reasoning/check"].data.metrics
    sft_manifest = json.loads((results / "sft/manifest.json").read_text())
    assert tracked["sft"].data.tags["input.base"] == sft_manifest["inputs"]["base"]["sha256"]
    assert all(r.info.status == "FINISHED" for r in tracked.values())
    # a second run, without the tracker, has nothing to do: the tracker is no stage's parameter
    again = run([bin_path("snakemake"), "--cores", "2", "--configfile", "tiny.yaml"], project)
    assert "Nothing to be done" in again.stdout + again.stderr
    snakemake_artifacts = _tree_hashes(results)

    # DVC, from scratch in a second copy, with the same overlay
    import shutil

    other = tmp_path / "dvc_copy"
    # (without the first run's checkpoints: a stage that finds its finished checkpoint resumes from it, and
    # its manifest says so)
    shutil.copytree(project, other, ignore=shutil.ignore_patterns("results", ".snakemake", ".posttrain", "mlruns.db"),
                    symlinks=True)
    run([bin_path("posttrain"), "dag", "--write", "--recipe", "tiny.yaml"], other)
    run([bin_path("dvc"), "init", "-q"], other)
    shutil.copy(ROOT / ".dvc/config", other / ".dvc/config")   # the default remote, beside the checkout
    shutil.copy(ROOT / ".dvcignore", other / ".dvcignore")
    run([bin_path("dvc"), "repro"], other)
    assert _tree_hashes(other / "results") == snakemake_artifacts
    status = run([bin_path("dvc"), "status"], other).stdout
    assert "up to date" in status
    # the Snakemake run, recorded by DVC (as `make demo` does), writes the same dvc.lock as the DVC
    # run did in another folder minutes later: a committed lock is a baseline that a rerun matches
    run([bin_path("posttrain"), "dag", "--write", "--recipe", "tiny.yaml"], project)
    run([bin_path("dvc"), "init", "-q"], project)
    shutil.copy(ROOT / ".dvcignore", project / ".dvcignore")
    run([bin_path("dvc"), "commit", "--force", "--quiet"], project)
    assert yaml.safe_load((project / "dvc.lock").read_text()) == yaml.safe_load((other / "dvc.lock").read_text())
    metrics = run([bin_path("dvc"), "metrics", "show", "--json"], other).stdout
    assert "rows_out" in metrics
    report = json.loads((other / "results/report/metrics.json").read_text())
    assert set(report) == {"base", "sft", "helpfulness", "reasoning", "rl_zero", "dpo", "student_sft", "distilled",
                           "reasoning_gptq", "reasoning_gguf", "reasoning_gguf_lora"}
    assert report["distilled"]["parameters"] > 0
    assert "## Size" in (other / "results/report/report.md").read_text()
    samples = json.loads((other / "results/distill/samples/metrics.json").read_text())
    assert samples["accepted"] + samples["rejected"] == samples["samples"] > 0
    assert {"arithmetic_accuracy", "helpful_rm_score", "win_rate_vs_reference"} <= set(report["reasoning"])
    assert "partial" in (other / "results/report/report.md").read_text()

    # dvc metrics diff across commits: commit this run, change an eval parameter, rerun
    run(["git", "add", "-A"], other)
    run(["git", "commit", "-qm", "first run"], other)

    # dvc push, a fresh clone, dvc pull: the artifacts come back and the pipeline is up to date
    run([bin_path("dvc"), "push", "-q"], other)
    assert (tmp_path / "posttrain-dvc-storage").is_dir()
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(other), str(clone)], tmp_path)
    run([bin_path("dvc"), "pull", "-q"], clone)
    assert _tree_hashes(clone / "results") == snakemake_artifacts
    assert "up to date" in run([bin_path("dvc"), "status"], clone).stdout
    overlay = (other / "tiny.yaml").read_text().replace("  perplexity_rows: 4", "  perplexity_rows: 2")
    (other / "tiny.yaml").write_text(overlay)
    repro = run([bin_path("dvc"), "repro"], other).stdout
    assert "evaluate_base" in repro and "Stage 'sft' didn't change" in repro
    diff = json.loads(run([bin_path("dvc"), "metrics", "diff", "HEAD", "--json"], other).stdout)
    changed = diff["results/report/metrics.json"]
    assert "base.perplexity" in changed and changed["base.perplexity"]["old"] != changed["base.perplexity"]["new"]
    # posttrain compare: the committed run (checked out of DVC's cache) against the one in the work tree
    run([bin_path("posttrain"), "compare", "HEAD", ".", "--out", "cmp"], other)
    page = json.loads((other / "cmp/compare.json").read_text())
    rows = {(r["model"], r["metric"]): r for r in page["metrics"]}
    assert rows[("base", "perplexity")]["delta"] != 0 and rows[("base", "arithmetic_accuracy")]["delta"] == 0
    assert rows[("base", "arithmetic_accuracy")]["test"] == "McNemar exact"
    artifacts = {r["artifact"]: r for r in page["artifacts"]}
    assert artifacts["sft"]["status"] == "same manifest"
    assert {"key": "perplexity_rows", "a": 4, "b": 2} in artifacts["eval/base"]["params"]
    assert "report" in artifacts and (other / "cmp/compare.html").read_text().count("data:image/png") >= 3
    assert run(["git", "worktree", "list"], other).stdout.count("\n") == 1   # the scratch checkout is gone
    # a DVC experiment on our params (dvc exp run -S), listed with its metrics and compared by name
    run([bin_path("dvc"), "exp", "run", "-S", "tiny.yaml:evaluate.perplexity_rows=3", "-n", "three-rows"], other)
    shown = json.loads(run([bin_path("dvc"), "exp", "show", "--json"], other).stdout)
    experiments = [e for row in shown for e in (row.get("experiments") or [])]
    three = next(r for e in experiments for r in e["revs"] if r["name"] == "three-rows")
    assert "results/report/metrics.json" in three["data"]["metrics"]
    run([bin_path("posttrain"), "compare", "HEAD", "three-rows", "--out", "cmp3"], other)
    page = json.loads((other / "cmp3/compare.json").read_text())
    evaluation = {r["artifact"]: r for r in page["artifacts"]}["eval/sft"]
    assert {"key": "perplexity_rows", "a": 4, "b": 3} in evaluation["params"]

    # the regression gate on the tiny DAG: noise bands from a repeat with other training seeds, then
    # a planted regression (an SFT that learns nothing) fails it, naming metric, model and stage
    posttrain = bin_path("posttrain")
    run(["git", "checkout", "--", "tiny.yaml"], other)                 # HEAD's parameters again
    seeds = ["-S", "tiny.yaml:++sft.seed=1", "-S", "tiny.yaml:++reward.seed=1"]    # ++: keys the overlay lacks
    run([bin_path("dvc"), "exp", "run", *seeds, "-n", "seed1"], other)
    run([posttrain, "noise-bands", "HEAD", "seed1", "--out", "bands.json"], other)
    bands = json.loads((other / "bands.json").read_text())["bands"]
    assert bands["sft"]["perplexity"]["band"] > 0 and len(bands["sft"]["perplexity"]["values"]) == 2
    run(["git", "checkout", "--", "tiny.yaml"], other)
    run([bin_path("dvc"), "exp", "run", "-S", "tiny.yaml:sft.learning_rate=1e-6", "-n", "planted"], other)
    gated = run([posttrain, "compare", "HEAD", "planted", "--gate", "bands.json", "--out", "cmp4"], other, check=False)
    assert gated.returncode == 1, gated.stdout + gated.stderr
    assert re.search(r"^regression: sft perplexity: .*beyond its noise band .*; began at sft \(learning_rate "
                     r"0\.01 -> 1e-06\)$", gated.stderr, re.M), gated.stderr
    # the same comparison without the planted change (the seeded repeat itself) passes
    assert run([posttrain, "compare", "HEAD", "seed1", "--gate", "bands.json", "--out", "cmp5"], other).returncode == 0


def test_the_longest_chain_then_what_the_evaluations_wait_for_are_scheduled_first():
    from posttrain.config import load_params
    from posttrain.dag import stages

    priority = {s.name: s.priority for s in stages(load_params([ROOT / "params.yaml"]))}
    rms = ("reward_helpful", "reward_safety", "reward_helpful_audit")
    assert {priority[n] for n in rms} == {priority["evaluate_sft"]} and priority["evaluate_sft"] > 0
    # the longest chain (the RL stages, the student's layers and the teacher's samples, then
    # distillation) goes first
    chain = ("rl_helpfulness", "rl_safety", "rl_reasoning", "student_base", "distill_samples", "distill")
    top = max(priority.values())
    assert {priority[n] for n in chain} == {top} and top > priority["evaluate_sft"]
    # then what one evaluation waits for (the exports, the plain-SFT student, the RL-first and DPO
    # stages), then the evaluations
    one = ("export_merge", "export_gptq", "export_gguf", "distill_baseline", "rl_zero", "preference_dpo")
    levels = {priority[n] for n in one}
    assert len(levels) == 1 and 0 < min(levels) < priority["evaluate_sft"]
    assert not [n for n, p in priority.items()
                if p and n not in (*rms, "evaluate_sft", *chain, *one)]
    assert not [n for n in priority if n.startswith("evaluate_") and n != "evaluate_sft" and priority[n]]


def rule_threads(cwd, cores: int) -> dict[str, int]:
    """{rule: threads} of a dry run on `cores` cores (Snakemake prints threads above one)."""
    out = run([bin_path("snakemake"), "-n", "--forceall", "--cores", str(cores)], cwd).stdout
    rules = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", out, re.M)
    return {name: int((re.findall(r"^    threads: (\d+)$", body, re.M) or [1])[0]) for name, body in rules}


def test_sft_takes_every_core_and_training_beside_other_work_half(project):
    # On two cores a second thread makes training only 1.6-1.8x faster, so the reward models,
    # the students and the GPTQ export take one core and run beside an evaluation.
    for cores in (2, 8):
        threads = rule_threads(project, cores)
        assert threads["sft"] == cores
        half = ("reward_helpful", "reward_safety", "reward_helpful_audit", "distill", "distill_baseline", "export_gptq")
        assert {threads[n] for n in half} == {cores // 2}
        assert {t for n, t in threads.items() if n.startswith("evaluate_")} == {1}


def test_critical_path_is_the_longest_chain_of_dependent_stages():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from posttrain.dag import Stage
    from stage_costs import critical_path

    table = [Stage("a", [], [], ["out/a"], []), Stage("b", [], ["out/a"], ["out/b"], []),
             Stage("c", [], ["out/a"], ["out/c"], []), Stage("d", [], ["out/b", "out/c", "data/raw"], ["out/d"], [])]
    assert critical_path({"a": 1, "b": 5, "c": 2, "d": 1}, table) == (["a", "b", "d"], 7)
    assert critical_path({"a": 1, "b": 1, "c": 9, "d": 1}, table) == (["a", "c", "d"], 11)


def test_the_cores_a_rule_holds_bound_the_run():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from posttrain.dag import Stage
    from stage_costs import path_summary

    # a two-thread training stage beside two one-core evaluations; one stage ran elsewhere
    table = [Stage("train", [], [], ["out/t"], [], cores_share=1.0), Stage("e1", [], ["out/t"], ["out/e1"], []),
             Stage("e2", [], ["out/t"], ["out/e2"], [])]
    rows = [{"rule": "train", "s": 100.0, "cpu_s": 170.0}, {"rule": "e1", "s": 50.0, "cpu_s": 50.0},
            {"rule": "e2", "s": 30.0, "cpu_s": 30.0}]
    summary = path_summary(rows, table, cores=2)
    assert "critical path: 150 s" in summary                         # train, then the longer evaluation
    assert "CPU seconds / 2 cores: 125 s" in summary                  # (170 + 50 + 30) / 2
    assert "core-seconds held (wall x the rule's threads) / 2 cores: 140 s" in summary   # (200 + 50 + 30) / 2
