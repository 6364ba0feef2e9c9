"""dvc.yaml, written from the stage table (`posttrain dag --write`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from posttrain.config import DEFAULT_PARAMS, read_yaml
from posttrain.dag.stage import Stage

DVC_YAML = Path("dvc.yaml")
DVC_HEADER = ("# Generated from the stage table (src/posttrain/dag/) by `posttrain dag --write`; do not edit by hand.\n"
              "# tests/workflow/test_dag.py fails when this file and the Snakefile's rules drift apart.\n")


def dvc_yaml(table: list[Stage]) -> str:
    doc: dict = {"stages": {}}
    metrics: list[str] = []
    plots: list = []
    for s in table:
        entry: dict = {"cmd": s.cmd}
        entry["deps"] = s.inputs
        if s.params:
            entry["params"] = _dvc_params(s)
        entry["outs"] = list(s.outs)
        doc["stages"][s.name] = entry
        metrics += s.metrics
        plots += s.plots
    if metrics:
        doc["metrics"] = metrics
    if plots:
        doc["plots"] = plots
    return DVC_HEADER + yaml.safe_dump(doc, sort_keys=False, width=1000)


def _dvc_params(s: Stage) -> list:
    """Sections from params.yaml, plus the same sections from each overlay that sets them."""
    out: list = list(s.params)
    for f in s.param_files:
        if f == str(DEFAULT_PARAMS):
            continue
        present = [p for p in s.params if p in read_yaml(Path(f))]
        if present:
            out.append({f: present})
    return out
