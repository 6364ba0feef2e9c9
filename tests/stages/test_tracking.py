"""Experiment tracking (params' tracking:): a run per stage in MLflow, TensorBoard or Trackio, read back."""

import json
import os
import sys

import pytest

from conftest import ROOT, TINY_OVERLAY, bin_path, run, sft_overrides, write_overlay
from posttrain.config import load_params
from posttrain.core import tracking
from posttrain.stages import sft

TRACKER_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "TENSORBOARD_LOGGING_DIR",
               "TRACKIO_DIR", tracking.ENVIRONMENT)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """configure() hands the run to the Trainer's callbacks in the environment: undone after each test."""
    for name in TRACKER_ENV:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    yield
    tracking.finish({})


def _params(tmp_path, tracker: dict):
    return load_params([ROOT / "params.yaml", TINY_OVERLAY,
                        write_overlay(tmp_path, "o", {**sft_overrides(tmp_path, max_steps=4), "tracking": tracker})])


def test_an_sft_stage_is_one_mlflow_run_with_its_curve_metrics_and_input_hashes(tmp_path, tiny_base, sft_data):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    params = _params(tmp_path, {"backend": "mlflow", "uri": uri, "experiment": "demo"})
    tracking.configure(params.tracking, "sft", "0123456789abcdef")
    manifest = sft.main(params, tiny_base, sft_data, tmp_path / "sft")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.run_name == "sft@0123456789" and run.info.status == "FINISHED"
    losses = client.get_metric_history(run.info.run_id, "loss")         # the Trainer's callback, per step
    assert len(losses) >= 2 and {m.step for m in losses} >= {1, 2}
    assert run.data.tags["input.base"] == manifest["inputs"]["base"]["sha256"]
    assert run.data.tags["posttrain.stage"] == "sft" and run.data.tags["posttrain.git_commit"] == "0123456789abcdef"
    assert run.data.params["learning_rate"] == "0.01"                   # the trainer's arguments
    tracking.configure(params.tracking, "rl/helpfulness")               # our PPO loop reports its steps
    tracking.log({"reward": 0.5, "kl": 0.1, "note": "not a number"}, step=3)
    tracking.finish({"stage": "rl:helpfulness", "metrics": {"heldout_reward": 0.7}})
    rl = next(r for r in client.search_runs([client.get_experiment_by_name("demo").experiment_id])
              if r.info.run_name == "rl/helpfulness")
    assert [(m.step, m.value) for m in client.get_metric_history(rl.info.run_id, "reward")] == [(3, 0.5)]
    assert rl.data.metrics["heldout_reward"] == 0.7 and "note" not in rl.data.metrics


def test_tensorboard_event_files_per_stage(tmp_path, tiny_base, sft_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    params = _params(tmp_path, {"backend": "tensorboard", "uri": str(tmp_path / "tb")})
    tracking.configure(params.tracking, "sft")
    sft.main(params, tiny_base, sft_data, tmp_path / "sft")
    events = EventAccumulator(str(tmp_path / "tb" / "sft"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "train/loss" in scalars and len(events.Scalars("train/loss")) >= 2
    inputs = events.Tensors("inputs/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(inputs)["posttrain.stage"] == "sft"


def test_an_sft_stage_is_one_trackio_run_in_a_local_store(tmp_path, tiny_base, sft_data):
    # `posttrain sft` in its own process, as a DAG runs it: Trackio fixes its store's folder when
    # first imported, and this test process has imported it already (TRL does, with a trainer)
    overlay = write_overlay(tmp_path, "o", {**sft_overrides(tmp_path, max_steps=4), "tracking": {
        "backend": "trackio", "uri": str(tmp_path / "trackio"), "experiment": "demo"}})
    run([bin_path("posttrain"), "sft", "--base", tiny_base, "--data", sft_data, "--out", "sft",
         *[a for p in (ROOT / "params.yaml", TINY_OVERLAY, overlay) for a in ("--params", p)]], cwd=tmp_path)
    manifest = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    read_back = run([sys.executable, "-c", (
        "import json; from trackio.sqlite_storage import SQLiteStorage as S; (name,) = S.get_runs('demo'); "
        "print(json.dumps([name, S.get_logs('demo', name), S.get_run_config('demo', name)], default=str))")],
        cwd=tmp_path, env={"TRACKIO_DIR": str(tmp_path / "trackio")})
    name, logs, config = json.loads(read_back.stdout.strip().splitlines()[-1])
    assert name == "sft"                     # one run, named after the artifact: the Trainer's callback resumed ours
    losses = [row["train/loss"] for row in logs if "train/loss" in row]
    assert len(losses) >= 2 and all(loss > 0 for loss in losses)
    assert any(row.get("val_loss_best") == manifest["metrics"]["val_loss_best"] for row in logs)   # final metrics
    assert config["input.base"] == manifest["inputs"]["base"]["sha256"] and config["posttrain.stage"] == "sft"


def test_trackio_imported_before_its_store_is_set_is_a_named_error(tmp_path):
    import trackio  # noqa: F401  (as a trainer built earlier in this process would have)

    params = _params(tmp_path, {"backend": "trackio", "uri": str(tmp_path / "elsewhere")})
    with pytest.raises(RuntimeError, match="trackio was imported before its store was set"):
        tracking.configure(params.tracking, "sft")


def test_snakemake_hands_an_overlays_tracker_to_the_stages_without_changing_their_commands(tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.ENVIRONMENT, json.dumps({"backend": "tensorboard", "uri": str(tmp_path / "tb")}))
    tracking.configure(load_params([ROOT / "params.yaml"]).tracking, "eval/sft")   # params say none
    assert tracking.trainer_arguments() == {"report_to": ["tensorboard"], "run_name": "eval/sft"}
    tracking.finish({"stage": "evaluate:sft", "metrics": {"arithmetic_accuracy": 0.25}})
    assert tracking.trainer_arguments()["report_to"] == "none" and (tmp_path / "tb" / "eval" / "sft").is_dir()


def test_a_stage_that_fails_leaves_its_run_marked_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    from posttrain import cli

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    overlay = write_overlay(tmp_path, "t", {"tracking": {"backend": "mlflow", "uri": uri}})
    assert cli.main(["evaluate", "--model", str(tmp_path / "missing"), "--name", "x", "--eval-data",
                     str(tmp_path / "missing-data"), "--out", str(tmp_path / "results/eval/x"),
                     "--params", str(ROOT / "params.yaml"), "--params", str(overlay)]) == 1
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("posttrain").experiment_id])
    assert run.info.run_name.split("@")[0] == "eval/x" and run.info.status == "FAILED"


def test_stages_that_start_together_share_a_new_mlflow_store(tmp_path):
    """Two rules start at once on two cores: both create the same new SQLite store and experiment.
    Unserialised, alembic's table creation fails one of them."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    script = ("import sys; from posttrain.core import tracking; tracking.configure(None, sys.argv[1]); "
              "tracking.finish({'metrics': {'x': 1.0}})")
    env = {**os.environ, tracking.ENVIRONMENT: json.dumps({"backend": "mlflow", "uri": uri, "experiment": "together"})}
    starts = [subprocess.Popen([sys.executable, "-c", script, name], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
                               text=True) for name in ("demo_data", "base", "eval/base")]
    errors = [p.communicate()[1] for p in starts]
    assert [p.returncode for p in starts] == [0, 0, 0], errors
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["base", "demo_data", "eval/base"]
