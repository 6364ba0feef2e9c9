"""Snakemake's `benchmark:` files (logs/benchmarks/<rule>.tsv): each rule's wall seconds, peak
memory and CPU seconds. The report's timing and benchmarks/stage_costs.py both read them here."""

from __future__ import annotations

import csv
from pathlib import Path


def read(folder: Path) -> list[dict]:
    """A row per rule from its file's last line: `rule`, `s` (wall), `max_rss_mb`, `cpu_s` (None where
    Snakemake wrote NA) and `end` (the file's modification time: when the rule ended)."""
    rows = []
    for path in sorted(Path(folder).glob("*.tsv")):
        with path.open() as fh:
            records = list(csv.DictReader(fh, delimiter="\t"))
        if records:
            last = records[-1]
            rows.append({"rule": path.stem, "s": float(last["s"]), "max_rss_mb": _number(last.get("max_rss")),
                         "cpu_s": _number(last.get("cpu_time")), "end": path.stat().st_mtime})
    return rows


def _number(value: str | None) -> float | None:
    return float(value) if value not in (None, "NA") else None
