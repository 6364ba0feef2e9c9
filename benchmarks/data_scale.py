"""The data stage on growing inputs: rows per second and peak memory at 10k, 100k and 1M short SFT
rows (JSON Lines), each size in a fresh process (`posttrain prepare-data`, params.yaml's cleaning),
side by side in one run. The stage streams: memory should stay flat as the file grows.

    .venv/bin/python benchmarks/data_scale.py [--sizes 10000 100000 1000000] [--near-dup]

Without `--near-dup` the near-duplicate pass is off (its MinHash index holds a signature per kept
row, so its memory grows with the rows by design); `--near-dup` measures it too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Runs the stage in this process and prints its peak resident memory (ru_maxrss, KB on Linux).
CHILD = """
import resource, sys
from pathlib import Path
from posttrain.config import load_params
from posttrain.stages import prepare_data
params = load_params([sys.argv[1]])
params.data.cleaning.near_dup = sys.argv[4] == "1"
prepare_data.main(params, "sft", [sys.argv[2]], Path(sys.argv[3]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_rows(path: Path, n: int) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            a, b = divmod(i, 1000)
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"Row {i}: what is {a} plus {b}?"},
                {"role": "assistant", "content": f"{a} + {b} = {a + b}. #### {a + b}"}]}) + "\n")


def run(n: int, tmp: Path, near_dup: bool) -> dict:
    data = tmp / f"rows_{n}.jsonl"
    write_rows(data, n)
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "params.yaml"), str(data), str(tmp / f"out_{n}"),
                          "1" if near_dup else "0"], capture_output=True, text=True, cwd=tmp)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    report = json.loads((tmp / f"out_{n}" / "report.json").read_text())
    assert report["rows_in"] == n == report["rows_out"] + sum(report["dropped"].values())
    data.unlink()
    return {"rows": n, "seconds": seconds, "rows_per_s": n / seconds,
            "peak_mb": int(res.stdout.split()[-1]) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--near-dup", action="store_true", help="keep the near-duplicate pass on")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        results = [run(n, Path(d), args.near_dup) for n in args.sizes]
    print(f"data stage, sft, near_dup {'on' if args.near_dup else 'off'} (process start and imports included)")
    print(f"{'rows':>10} {'seconds':>9} {'rows/s':>9} {'peak MB':>9} {'peak vs first':>14}")
    for r in results:
        print(f"{r['rows']:>10,} {r['seconds']:>9.1f} {r['rows_per_s']:>9,.0f} {r['peak_mb']:>9.0f} "
              f"{r['peak_mb'] / results[0]['peak_mb']:>14.2f}")
    if len(results) >= 2:
        print(f"peak memory, largest vs second largest: {results[-1]['peak_mb'] / results[-2]['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
