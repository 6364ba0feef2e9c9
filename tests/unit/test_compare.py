"""`posttrain compare`: two run folders side by side (the tiny DAG's test compares commits)."""

import json

from conftest import write_run_folder
from posttrain import cli


def test_two_run_folders_side_by_side_with_paired_tests_params_inputs_and_curves(tmp_path):
    a = write_run_folder(tmp_path / "a", correct=20, lr=1e-4, perplexity=3.0, init_hash="x")
    b = write_run_folder(tmp_path / "b", correct=45, lr=2e-4, perplexity=2.5, init_hash="y")
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(a), str(b / "results"), "--out", str(out)]) == 0
    page = json.loads((out / "compare.json").read_text())
    rows = {(r["model"], r["metric"]): r for r in page["metrics"]}
    acc = rows[("sft", "arithmetic_accuracy")]
    # 25 prompts right in B only, none in A only: McNemar's exact p = 2 x 0.5^25
    assert (acc["a"], acc["b"], acc["delta"], acc["n"], acc["test"]) == (0.2, 0.45, 0.25, 100, "McNemar exact")
    assert acc["p"] < 1e-6 and acc["verdict"] == "better"
    assert rows[("sft", "perplexity")]["verdict"] == "no per-prompt test" and rows[("sft", "perplexity")]["p"] is None
    assert ("sft", "parameters") not in rows          # sizes only when they differ
    sft = {r["artifact"]: r for r in page["artifacts"]}["sft"]
    assert sft["status"] == "changed" and sft["inputs"] == ["init"]
    assert sft["params"] == [{"key": "learning_rate", "a": 1e-4, "b": 2e-4}]
    assert page["curves"] == {"sft": "curves/sft.png"} and (out / "curves/sft.png").stat().st_size > 1000
    html = (out / "compare.html").read_text()
    assert "data:image/png;base64," in html and 'class="better"' in html
    md = (out / "compare.md").read_text()
    assert "| sft | arithmetic_accuracy | 0.2 | 0.45 | +0.25 | 100 | McNemar exact | < 0.001 | better |" in md
    assert "`learning_rate` 0.0001 → 0.0002; input `init` changed" in md


def test_the_gate_fails_a_planted_regression_naming_metric_model_and_stage_and_passes_a_seed_change(tmp_path, capsys):
    # three seeded repeats: the same parameters, training noise in the figures
    repeats = [write_run_folder(tmp_path / f"seed{i}", correct=c, lr=1e-4, perplexity=ppl, init_hash="x")
               for i, (c, ppl) in enumerate([(30, 3.00), (33, 3.06), (28, 2.97)])]
    bands = tmp_path / "bands.json"
    assert cli.main(["noise-bands", *map(str, repeats), "--out", str(bands)]) == 0
    band = json.loads(bands.read_text())["bands"]["sft"]
    assert band["arithmetic_accuracy"]["values"] == [0.3, 0.33, 0.28] and band["perplexity"]["band"] > 0
    # a fourth seed passes the gate
    seed = write_run_folder(tmp_path / "seed3", correct=31, lr=1e-4, perplexity=3.04, init_hash="x")
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(repeats[0]), str(seed), "--gate", str(bands), "--out", str(out)]) == 0
    assert json.loads((out / "compare.json").read_text())["gate"]["passed"]
    # a planted regression (ten times the learning rate: fewer right, perplexity up) fails it, naming
    # the metric, the model and the stage whose parameters changed
    planted = write_run_folder(tmp_path / "planted", correct=12, lr=1e-3, perplexity=3.9, init_hash="x")
    capsys.readouterr()
    assert cli.main(["compare", str(repeats[0]), str(planted), "--gate", str(bands), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "regression: sft arithmetic_accuracy: 0.3 -> 0.12" in err and "regression: sft perplexity: 3 -> 3.9" in err
    assert "began at sft (learning_rate 0.0001 -> 0.001)" in err and "gate FAILED: 2 of 2" in err
    gate = json.loads((out / "compare.json").read_text())["gate"]
    assert [o["artifact"] for o in gate["regressions"][0]["origins"]] == ["sft"]
    assert "FAILED" in (out / "compare.md").read_text() and "id='gate'" in (out / "compare.html").read_text()


def test_noise_bands_need_two_repeats_and_the_gate_its_bands(tmp_path, capsys):
    a = write_run_folder(tmp_path / "a", correct=20, lr=1e-4, perplexity=3.0, init_hash="x")
    assert cli.main(["noise-bands", str(a), "--out", str(tmp_path / "b.json")]) == 1
    assert "at least two seeded repeats" in capsys.readouterr().err
    assert cli.main(["compare", str(a), str(a), "--gate", str(tmp_path / "none.json"), "--out", str(tmp_path)]) == 1
    assert "posttrain noise-bands RUN RUN" in capsys.readouterr().err


def test_a_run_that_is_neither_a_folder_nor_a_commit_is_named(tmp_path, capsys):
    a = write_run_folder(tmp_path / "a", correct=20, lr=1e-4, perplexity=3.0, init_hash="x")
    assert cli.main(["compare", str(a), "no-such-run", "--project", str(tmp_path), "--out", str(tmp_path / "c")]) == 1
    assert "'no-such-run' is neither a folder, a commit nor a DVC experiment" in capsys.readouterr().err


def test_a_folder_without_artifacts_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    a = write_run_folder(tmp_path / "a", correct=20, lr=1e-4, perplexity=3.0, init_hash="x")
    assert cli.main(["compare", str(a), str(tmp_path / "empty"), "--out", str(tmp_path / "c")]) == 1
    assert "no artifact" in capsys.readouterr().err


def test_a_commit_is_compared_from_the_artifacts_dvc_cached_for_it(tmp_path, capsys):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    dvc = str(Path(sys.executable).parent / "dvc")
    project = write_run_folder(tmp_path / "proj", correct=20, lr=1e-4, perplexity=3.0, init_hash="x")
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "CI"], [dvc, "init", "-q"], [dvc, "add", "-q", "results"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "first run"]):
        subprocess.run(cmd, cwd=project, check=True, capture_output=True)
    shutil.rmtree(project / "results")       # the work tree's run is now another one
    write_run_folder(tmp_path / "second", correct=45, lr=1e-4, perplexity=3.0, init_hash="x")
    shutil.copytree(tmp_path / "second/results", project / "results")
    assert cli.main(["compare", "HEAD", "results", "--project", str(project), "--out", str(project / "cmp")]) == 0
    page = json.loads((project / "cmp/compare.json").read_text())
    acc = next(r for r in page["metrics"] if r["metric"] == "arithmetic_accuracy")
    assert (acc["a"], acc["b"], acc["verdict"]) == (0.2, 0.45, "better")
    assert page["a"]["label"] == "HEAD" and page["a"]["results"] == "DVC's cache"   # not the scratch checkout
    assert page["b"]["results"].endswith("proj/results")
    assert "A: `DVC's cache`" in (project / "cmp/compare.md").read_text()
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=project, capture_output=True, text=True).stdout
    assert len(worktrees.splitlines()) == 1
    shutil.rmtree(project / ".dvc/cache")    # a commit whose artifacts this machine never had
    assert cli.main(["compare", "HEAD", "results", "--project", str(project), "--out", str(project / "c2")]) == 1
    assert "`dvc pull` them, or `dvc repro` at that commit" in capsys.readouterr().err


def test_a_dvc_experiment_is_compared_by_its_name(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    project = tmp_path / "proj"
    project.mkdir()
    (project / "params.yaml").write_text("correct: 20\n")
    (project / "make_run.py").write_text(
        "import json, os, yaml\n"
        "n = yaml.safe_load(open('params.yaml'))['correct']\n"
        "os.makedirs('results/eval/sft', exist_ok=True)\n"
        "rows = [{'task': 'posttrain_arithmetic', 'id': f'q{i}', 'correct': i < n} for i in range(100)]\n"
        "open('results/eval/sft/samples.jsonl', 'w').write(''.join(json.dumps(r) + '\\n' for r in rows))\n"
        "json.dump({'model': 'sft', 'metrics': {'arithmetic_accuracy': n / 100}}, "
        "open('results/eval/sft/metrics.json', 'w'))\n"
        "json.dump({'stage': 'evaluate:sft', 'params': {'correct': n}}, open('results/eval/sft/manifest.json', 'w'))\n")
    (project / "dvc.yaml").write_text("stages:\n  make:\n    cmd: python make_run.py\n    deps: [make_run.py]\n"
                                      "    params: [correct]\n    outs: [results]\n"
                                      "metrics: [results/eval/sft/metrics.json]\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "CI"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "baseline"],
                ["dvc", "exp", "run", "-q", "-S", "correct=45", "-n", "more-right"]):
        subprocess.run(cmd, cwd=project, check=True, capture_output=True, env=env)
    assert cli.main(["compare", "HEAD", "more-right", "--project", str(project), "--out", str(tmp_path / "c")]) == 0
    page = json.loads((tmp_path / "c/compare.json").read_text())
    (acc,) = page["metrics"]
    assert (acc["a"], acc["b"], acc["verdict"]) == (0.2, 0.45, "better")
    assert {r["artifact"]: r for r in page["artifacts"]}["eval/sft"]["params"] == [{"key": "correct", "a": 20, "b": 45}]


def test_the_demos_committed_noise_bands_cover_its_models_and_gate_a_seeded_repeat():
    """docs/results/noise-bands.json: measured from seeded repeats of `make demo`; a band per
    directed metric of every model the demo's report has, and each repeat within every band when
    compared with another (a seed-only change passes the gate)."""
    from conftest import ROOT
    from posttrain.compare import gate
    from posttrain.stats.directions import loss

    bands = gate.load(ROOT / "docs" / "results" / "noise-bands.json")
    assert len(bands["runs"]) >= 2 and len(bands["commits"]) == len(bands["runs"])
    report = (ROOT / "docs" / "results" / "demo.md").read_text()
    models = set(bands["bands"])
    assert {"base", "sft", "helpfulness", "safety", "reasoning", "rl_zero", "distilled"} <= models
    assert all(f"| {m} |" in report for m in models)
    for model, metrics in bands["bands"].items():
        assert {"arithmetic_accuracy", "harmful_refusal_rate", "perplexity"} <= set(metrics), model
        for metric, band in metrics.items():
            assert band["band"] >= 0 and len(band["values"]) == len(bands["runs"])
            first, *others = band["values"]
            for other in others:      # a repeat against the first: within the band it helped measure
                assert loss(metric, first, other) <= band["band"] + 1e-9, (model, metric)
