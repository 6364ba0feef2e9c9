"""The DAG, declared once: the stage table that Snakemake's rules and dvc.yaml are both made from.

    stages(params, param_files)   the table (posttrain.dag.table)
    dvc_yaml(table)               dvc.yaml's text (posttrain.dag.dvc)
    mermaid(table)                the README's diagram (posttrain.dag.mermaid)
"""

from posttrain.dag.dvc import DVC_YAML, dvc_yaml
from posttrain.dag.mermaid import mermaid
from posttrain.dag.stage import EXPORT_ENV, RESULTS, Stage
from posttrain.dag.table import final_targets, stages

__all__ = ["DVC_YAML", "EXPORT_ENV", "RESULTS", "Stage", "dvc_yaml", "final_targets", "mermaid", "stages"]
