"""`tracking:` where trainers, evaluations and export checks also send their numbers (an
experiment tracker). Not part of any stage's parameters: changing it reruns nothing, and the
artifacts are the same whichever tracker watched them being made."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from posttrain.config.base import Section


class TrackingParams(Section):
    """An experiment tracker beside the artifacts: each stage is a run named `<stage>@<commit>`,
    tagged with the hashes of its inputs (from its manifest)."""
    backend: Literal["none", "mlflow", "tensorboard", "trackio"] = Field("none", description=(
        "none: the artifacts' own logs and curves only. mlflow: an MLflow run per stage (training curves through "
        "the trainer's MLflow callback, final metrics and tags at the end). tensorboard: event files per stage "
        "under `uri`. trackio: a Trackio run per stage, like mlflow (`trackio show` opens its dashboard)."))
    uri: str | None = Field(None, description=(
        "mlflow: the tracking URI (`sqlite:///mlruns.db` for a local store, `http://host:5000` for a server; "
        "default: MLflow's own, `MLFLOW_TRACKING_URI`). tensorboard: the folder of event files (default "
        "`logs/tensorboard`); each stage writes a subfolder named after it. trackio: the folder of its local store "
        "(its TRACKIO_DIR; default Trackio's own, ~/.cache/huggingface/trackio) or a Trackio server's http(s) URL."))
    experiment: str = Field("posttrain", description="The MLflow experiment or Trackio project the runs go to.")
