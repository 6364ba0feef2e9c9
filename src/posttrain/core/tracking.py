"""Experiment tracking beside the artifacts (params' `tracking:` section): each stage process is
one run, named `<artifact>@<commit>`, that its trainer's curves, its final metrics and its
manifest's input hashes (as tags) go to. MLflow, TensorBoard or Trackio; `none` does nothing.

The command configures it once, before the stage starts (`configure`). Trainers built on
transformers' Trainer report through its own callbacks (`trainer_arguments()`): for MLflow the run is
created here and its id handed to the callback (`MLFLOW_RUN_ID`), so the curves and what this
module logs land in one run; for TensorBoard the callback and this module write to the same
folder; for Trackio both open the run of the same project and name. `write_manifest` ends the
run (`finish`) with the manifest's metrics and input hashes.
Only the main process of a multi-process job reports.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)
DEFAULT_TENSORBOARD_DIR = "logs/tensorboard"
LOCK = Path(".posttrain/tracking.lock")      # beside the checkpoints, in the project the stages run in
_active: _Run | None = None


class _Run(ABC):
    """One stage's run in a tracker; a subclass per backend."""
    backend = ""

    def __init__(self, uri: str | None, experiment: str, name: str, commit: str | None):
        self.name, self.experiment = name, experiment
        self.run_name = f"{name}@{commit[:10]}" if commit else name
        self.tags = {"posttrain.artifact": name, **({"posttrain.git_commit": commit} if commit else {})}

    @abstractmethod
    def log(self, metrics: dict, step: int) -> None:
        """A step's numbers (a loop of our own: PPO)."""

    @abstractmethod
    def finish(self, manifest: dict) -> None:
        """The manifest's final metrics and input hashes, and the run's end."""

    @abstractmethod
    def abandon(self) -> None:
        """The run of a stage that stopped before its manifest, marked failed."""


class _Mlflow(_Run):
    backend = "mlflow"

    def __init__(self, uri, experiment, name, commit):
        super().__init__(uri, experiment, name, commit)
        from mlflow.tracking import MlflowClient

        if uri:
            os.environ["MLFLOW_TRACKING_URI"] = uri
        os.environ["MLFLOW_EXPERIMENT_NAME"] = experiment
        with _one_process_at_a_time():
            self.client = MlflowClient(uri)
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags).info.run_id
        os.environ["MLFLOW_RUN_ID"] = self.run_id      # the Trainer's MLflow callback resumes this run

    def log(self, metrics, step):
        for key, value in _numbers(metrics).items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def finish(self, manifest):
        for key, value in _numbers(_final_metrics(manifest)).items():
            self.client.log_metric(self.run_id, key, value)
        for key, value in _input_tags(manifest).items():
            self.client.set_tag(self.run_id, key, str(value))
        self.client.set_terminated(self.run_id)

    def abandon(self):
        self.client.set_terminated(self.run_id, status="FAILED")


class _TensorBoard(_Run):
    backend = "tensorboard"

    def __init__(self, uri, experiment, name, commit):
        super().__init__(uri, experiment, name, commit)
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(uri or DEFAULT_TENSORBOARD_DIR) / name
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.folder)   # the Trainer's TensorBoard callback
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def log(self, metrics, step):
        for key, value in _numbers(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, manifest):
        for key, value in _numbers(_final_metrics(manifest)).items():
            self.writer.add_scalar(key, value, 0)
        self.writer.add_text("inputs", json.dumps(_input_tags(manifest), indent=1, sort_keys=True))
        self.writer.close()

    def abandon(self):
        self.writer.close()


class _Trackio(_Run):
    """Trackio's local SQLite store (`uri` a folder, its TRACKIO_DIR) or a Trackio server (`uri` an
    http(s) URL). The Trainer's Trackio callback opens the run of the same project and name
    (resume="allow") and closes it when training ends, so `finish` reopens it for the final metrics."""
    backend = "trackio"

    def __init__(self, uri, experiment, name, commit):
        super().__init__(uri, experiment, name, commit)
        remote = bool(uri) and uri.startswith(("http://", "https://"))
        self.server_url = uri if remote else None
        if uri and not remote:
            store = Path(uri).resolve()
            if "trackio" in sys.modules and Path(sys.modules["trackio"].utils.TRACKIO_DIR).resolve() != store:
                # Trackio fixes its store's folder when first imported (TRL imports it with a trainer)
                raise RuntimeError(f"tracking: trackio was imported before its store was set to {store}; configure "
                                   f"tracking before building a trainer")
            os.environ["TRACKIO_DIR"] = str(store)
        import trackio

        self.trackio = trackio
        with _one_process_at_a_time():
            self._open(config=self.tags)

    def _open(self, config: dict | None = None) -> None:
        self.trackio.init(project=self.experiment, name=self.run_name, server_url=self.server_url, resume="allow",
                          config=config, embed=False, auto_log_cpu=False, auto_log_gpu=False)

    def log(self, metrics, step):
        self.trackio.log(_numbers(metrics), step=step)

    def finish(self, manifest):
        with _one_process_at_a_time():
            self._open()
        self.trackio.config.update(_input_tags(manifest), allow_val_change=True)
        self.trackio.log(_numbers(_final_metrics(manifest)))
        self.trackio.finish()

    def abandon(self):
        self.trackio.finish()


BACKENDS = {cls.backend: cls for cls in (_Mlflow, _TensorBoard, _Trackio)}


def _input_tags(manifest: dict) -> dict:
    tags = {f"input.{k}": v.get("sha256") for k, v in (manifest.get("inputs") or {}).items() if isinstance(v, dict)}
    tags["posttrain.stage"] = manifest.get("stage")
    return tags


def _final_metrics(manifest: dict) -> dict:
    return manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else {}


@contextmanager
def _one_process_at_a_time():
    """An exclusive lock across the project's processes: stages that start together (two rules on
    two cores) would otherwise race to create a new SQLite store's tables (alembic fails the
    loser) or the same experiment."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _numbers(metrics: dict) -> dict[str, float]:
    """The values a tracker can plot (a release gate's pass as 1, its failure as 0)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


# Snakemake hands a run's tracker to every rule in the environment (rules/common.smk): the
# section is no stage's parameter, so an overlay that sets it changes no command and reruns nothing.
ENVIRONMENT = "POSTTRAIN_TRACKING"


def configure(cfg, name: str, commit: str | None = None) -> None:
    """Start the run of the artifact `name` (e.g. `rl/helpfulness`) when `cfg` (params.tracking),
    or else the POSTTRAIN_TRACKING environment variable, names a backend; on the main process only."""
    global _active
    _active = None
    settings = cfg.model_dump() if cfg is not None and cfg.backend != "none" else json.loads(
        os.environ.get(ENVIRONMENT) or '{"backend": "none"}')
    if settings["backend"] == "none" or int(os.environ.get("RANK", "0")) != 0:
        return
    backend = settings["backend"]
    try:
        _active = BACKENDS[backend](settings.get("uri"), settings.get("experiment") or "posttrain", name, commit)
    except ImportError as err:     # an environment of its own (.venv-export) may lack the tracker
        logger.warning("tracking: %s is not installed in this environment (%s); %s is not tracked",
                       backend, err, name)
        return
    logger.info("tracking %s in %s as run %s", name, backend, _active.run_name)


def trainer_arguments() -> dict:
    """TrainingArguments' tracking fields: the configured backend (or none), the run's name, and
    for Trackio the project the run is in (and no Space snapshot of it on the Hub)."""
    if not _active:
        return {"report_to": "none", "run_name": None}
    extra = {"project": _active.experiment, "trackio_static_space_id": False} if _active.backend == "trackio" else {}
    return {"report_to": [_active.backend], "run_name": _active.run_name, **extra}


def log(metrics: dict, step: int) -> None:
    """A loop of our own (PPO) reports a step's statistics; nothing without a tracker."""
    if _active:
        _active.log(metrics, step)


def abandon() -> None:
    """The run of a stage that ends without its manifest (an error, a preempted job) marked failed."""
    global _active
    if _active:
        try:
            _active.abandon()
        finally:
            _active = None


def finish(manifest: dict) -> None:
    """The run's final metrics and input hashes, and its end (write_manifest calls it)."""
    global _active
    if _active:
        try:
            _active.finish(manifest)
        finally:
            _active = None
