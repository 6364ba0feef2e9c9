"""Per-stage wall time and peak memory of the last Snakemake run, from its `benchmark:` files.

    .venv/bin/python benchmarks/stage_costs.py [logs/benchmarks]

Every rule writes logs/benchmarks/<rule>.tsv (Snakemake's benchmark directive: seconds, peak
resident memory, CPU time). This prints them as one table, slowest first, with the total and the
share of each stage.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def read(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(Path(folder).glob("*.tsv")):
        with path.open() as fh:
            records = list(csv.DictReader(fh, delimiter="\t"))
        if records:
            last = records[-1]
            rows.append({"rule": path.stem, "s": float(last["s"]),
                         "max_rss_mb": float(last["max_rss"]) if last.get("max_rss", "NA") != "NA" else None,
                         "cpu_s": float(last["cpu_time"]) if last.get("cpu_time", "NA") != "NA" else None})
    return rows


def stage_table(folder: Path) -> str:
    rows = sorted(read(folder), key=lambda r: -r["s"])
    if not rows:
        return ""
    total = sum(r["s"] for r in rows)
    lines = ["| stage | wall (s) | share | peak RSS (MB) | CPU (s) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        rss = f"{r['max_rss_mb']:.0f}" if r["max_rss_mb"] is not None else "-"
        cpu = f"{r['cpu_s']:.0f}" if r["cpu_s"] is not None else "-"
        lines.append(f"| {r['rule']} | {r['s']:.0f} | {r['s'] / total:.0%} | {rss} | {cpu} |")
    lines.append(f"| **all {len(rows)} stages, one after another** | **{total:.0f}** ({total / 60:.1f} min) | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("logs/benchmarks")
    table = stage_table(folder)
    print(table or f"no benchmark files under {folder}: run the DAG with Snakemake first")
