"""Per-stage wall time and peak memory of the last Snakemake run, from its `benchmark:` files.

    .venv/bin/python benchmarks/stage_costs.py [logs/benchmarks] [--params params.yaml [overlay.yaml]]

Every rule writes logs/benchmarks/<rule>.tsv (Snakemake's benchmark directive: seconds, peak
resident memory, CPU time). This prints them as one table, slowest first, with the total and the
share of each stage; then the DAG's critical path (the params' stage table, with these wall
times): the chain of stages that no number of cores would shorten, a lower bound of the run's
wall time next to the CPU seconds divided by the cores. The first line names this machine's CPU:
the same DAG takes twice as long on one 2-core machine as on another, so a figure is only
comparable next to the machine it was measured on (run it where the DAG ran).

With `--params`, it also replays the DAG on `--cores` cores as Snakemake schedules it (ready
rules by priority, each holding its threads for its wall time) and prints the finish time:
on the demo it lands within a minute of Snakemake's `Elapsed time`. `--what-if RULE=SECONDS`
(repeatable) replays it with a rule's wall time changed, to see what shortening a stage would
save before spending a run on it:

    .venv/bin/python benchmarks/stage_costs.py logs/benchmarks --params params.yaml \
        --what-if distill=180 --what-if distill_baseline=125
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from posttrain.core import benchmark_files


def machine() -> str:
    """The CPU model, the cores this process may use and the memory, from /proc (Linux)."""
    model = platform.processor() or platform.machine()
    try:
        # the first processor's fields; a virtual machine may name only the vendor ("AMD EPYC"),
        # so the family and model numbers (the CPU generation) come with it
        info = {}
        for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
        if "model name" in info:
            model = f"{info['model name']} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        memory = f", {mem_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = ""
    return f"machine: {model}, {len(os.sched_getaffinity(0))} cores{memory}"


def read(folder: Path) -> list[dict]:
    return benchmark_files.read(folder)


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


def critical_path(walls: dict[str, float], table) -> tuple[list[str], float]:
    """The longest chain of dependent stages (stage table order is a topological order), and its
    wall time: each stage starts when the last of its inputs is written."""
    produced = {out: s.name for s in table for out in s.outs}
    finish: dict[str, float] = {}
    before: dict[str, str | None] = {}
    for s in table:
        deps = [produced[d] for d in s.deps if d in produced]
        before[s.name] = max(deps, key=finish.__getitem__) if deps else None
        finish[s.name] = (finish[before[s.name]] if deps else 0.0) + walls.get(s.name, 0.0)
    if not finish:
        return [], 0.0
    last: str | None = max(finish, key=finish.__getitem__)
    path = []
    while last is not None:
        path.append(last)
        last = before[last]
    return path[::-1], max(finish.values())


def scheduled(walls: dict[str, float], table, cores: int) -> float:
    """When the last rule ends if `cores` cores run the DAG as Snakemake does: whenever cores
    free up, the ready rules of highest priority that fit start (no core is kept for a later
    rule), each holding its threads for its wall time."""
    produced = {out: s.name for s in table for out in s.outs}
    needs = {s.name: {produced[d] for d in s.deps if d in produced} for s in table}
    threads = {s.name: min(cores, s.rule_threads(cores)) for s in table}
    priority = {s.name: s.priority for s in table}
    waiting, running, done, free, now = [s.name for s in table], [], set(), cores, 0.0
    while waiting or running:
        for name in sorted((n for n in waiting if needs[n] <= done), key=lambda n: -priority[n]):
            if threads[name] <= free:
                free -= threads[name]
                waiting.remove(name)
                running.append((now + walls.get(name, 0.0), name))
        if not running:
            raise ValueError(f"rules that can never start: {sorted(waiting)}")
        running.sort()
        now, name = running.pop(0)
        free += threads[name]
        done.add(name)
    return now


def path_summary(rows: list[dict], table, cores: int, what_if: dict[str, float] | None = None) -> str:
    walls = {r["rule"]: r["s"] for r in rows}
    replay = scheduled(walls, table, cores)
    path, length = critical_path(walls, table)
    cpu = sum(r["cpu_s"] or r["s"] for r in rows)
    # A rule holds its threads' cores for its whole wall time, used or not (loading, saving, a
    # second thread that helps only 1.6-1.8x): the tighter bound of a run on `cores` cores.
    held = sum(walls.get(s.name, 0.0) * min(cores, s.rule_threads(cores)) for s in table)
    chain = " -> ".join(f"{n} ({walls.get(n, 0):.0f})" for n in path)
    return (f"critical path: {length:.0f} s ({length / 60:.1f} min): {chain}\n"
            f"CPU seconds / {cores} cores: {cpu / cores:.0f} s ({cpu / cores / 60:.1f} min)\n"
            f"core-seconds held (wall x the rule's threads) / {cores} cores: {held / cores:.0f} s "
            f"({held / cores / 60:.1f} min); the run cannot take less than the largest of the three\n"
            f"replayed on {cores} cores as Snakemake schedules it: {replay:.0f} s ({replay / 60:.1f} min)"
            + (_what_if_line(walls, what_if, table, cores) if what_if else ""))


def _what_if_line(walls: dict[str, float], what_if: dict[str, float], table, cores: int) -> str:
    unknown = sorted(set(what_if) - {s.name for s in table})
    if unknown:
        raise ValueError(f"--what-if: no rule {unknown} in this DAG")
    replay = scheduled({**walls, **what_if}, table, cores)
    changed = ", ".join(f"{rule} {walls.get(rule, 0):.0f} -> {sec:.0f} s" for rule, sec in what_if.items())
    return f"\nwhat if {changed}: {replay:.0f} s ({replay / 60:.1f} min)"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", nargs="?", default="logs/benchmarks", type=Path)
    ap.add_argument("--params", action="extend", nargs="+",
                    help="params.yaml and overlays (repeat or list them): adds the DAG's critical path")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--what-if", action="append", default=[], metavar="RULE=SECONDS",
                    help="replay the DAG with this rule's wall time (with --params; repeatable)")
    args = ap.parse_args()
    what_if = {rule: float(sec) for rule, _, sec in (w.partition("=") for w in args.what_if)}
    table = stage_table(args.folder)
    print(machine())
    print()
    print(table or f"no benchmark files under {args.folder}: run the DAG with Snakemake first")
    if table and args.params:
        from posttrain.config import load_params
        from posttrain.dag import stages

        print()
        print(path_summary(read(args.folder), stages(load_params(args.params), args.params), args.cores, what_if))
