"""The DAG, declared once: the stage table that Snakemake's rules and dvc.yaml are both made from."""
