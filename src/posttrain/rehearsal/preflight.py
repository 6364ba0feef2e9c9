"""The pre-flight report of a rehearsal (`preflight.md` and `.html`): per stage of the recipe,
what it will ask the cluster for, what it will cost, the rows it received in the rehearsal, the
packages its environment needs, and every stand-in the rehearsal used."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from posttrain import dag
from posttrain.config import Params
from posttrain.dag.checks import TRAINING_ENV_FILES
from posttrain.rehearsal import estimates, standins

# The import names each stage kind needs, beyond torch and transformers (which every stage needs).
NEEDS = {"sft": ["accelerate", "peft", "trl"], "reward": ["accelerate", "peft", "trl"],
         "rl": ["accelerate", "peft", "trl"], "distill": ["accelerate", "peft", "trl"],
         "prepare_data": ["datasets"], "evaluate": ["datasets"], "export_gptq": ["gptqmodel"],
         "export_gguf": ["gguf"], "export_gguf_lora": ["gguf"]}
# Packages a CPU machine cannot run, which the GPU image installs (envs/gpu.txt).
GPU_ONLY = {"vllm", "deepspeed", "bitsandbytes"}
BOLD = re.compile(r"\*\*(.+?)\*\*")
# Where the data kinds' prepared rows are, in a run's results/.
DATA = {"sft": "data/sft/train.jsonl", "preference": "data/preference/train.jsonl",
        "prompts": "data/prompts/train.jsonl", "eval": "data/eval/test.jsonl"}


@dataclass
class Package:
    stage: str
    package: str
    where: str        # the environment (its folder, or a requirement file for a GPU-only package)
    status: str       # imports | stand-in | missing


def environments(params: Params, root: Path) -> list[Package]:
    """Each stage's packages, imported in the environment the stage runs in (one interpreter per
    environment); the GPU image's packages are checked against envs/gpu.txt instead."""
    needs = {s.name: (s.env, _needs(params, s)) for s in dag.stages(params, ["params.yaml"])}
    wanted: dict[str, set[str]] = {}
    for env, pkgs in needs.values():
        wanted.setdefault(env, set()).update(p for p in pkgs if p not in GPU_ONLY)
    failing = {env: _failing_imports(root, env, sorted(pkgs)) for env, pkgs in wanted.items()}
    declared = _declared(root)
    found: list[Package] = []
    for rule, (env, pkgs) in needs.items():
        for pkg in pkgs:
            if pkg in GPU_ONLY:
                found.append(Package(rule, pkg, "envs/gpu.txt", "stand-in" if pkg in declared else "missing"))
            else:
                found.append(Package(rule, pkg, env or "the pipeline's environment",
                                     "missing" if pkg in failing[env] else "imports"))
    return found


def _needs(params: Params, s) -> list[str]:
    needs = ["torch", "transformers", *NEEDS.get(s.kind, [])]
    if s.kind in ("sft", "reward", "distill") and getattr(params, s.kind).strategy == "zero3":
        needs.append("deepspeed")
    if s.kind in ("sft", "reward", "distill") and getattr(params, s.kind).method == "qlora":
        needs.append("bitsandbytes")
    if s.kind == "rl" and params.rl.use_vllm and _algorithm(params, s.name) == "grpo":
        needs.append("vllm")
    if s.kind == "evaluate" and params.evaluate.harness_tasks:
        needs.append("lm_eval")
    return needs


def _failing_imports(root: Path, env: str, packages: list[str]) -> set[str]:
    """The packages that do not import in an environment (its folder; "": the running one)."""
    python = root / env / "bin" / "python" if env else Path(sys.executable)
    if not python.exists():
        return set(packages)
    probe = ("import importlib, json, sys\nbad = []\nfor p in sys.argv[1:]:\n    try:\n"
             "        importlib.import_module(p)\n    except Exception:\n        bad.append(p)\nprint(json.dumps(bad))")
    res = subprocess.run([str(python), "-c", probe, *packages], capture_output=True, text=True)
    return set(json.loads(res.stdout.strip().splitlines()[-1])) if res.returncode == 0 else set(packages)


def _algorithm(params: Params, rule: str) -> str:
    entries = {f"rl_{st.name}": st for st in params.rl.stages}
    if params.rl.zero is not None:
        entries["rl_zero"] = params.rl.zero
    return entries[rule].algorithm if rule in entries else ""


def _declared(root: Path) -> set[str]:
    names = set()
    for f in TRAINING_ENV_FILES:
        path = root / f
        if path.exists():
            names |= {re.split(r"[=<>\[ ]", line.strip())[0].lower() for line in path.read_text().splitlines()
                      if line.strip() and not line.startswith("#")}
    return names


def per_rule(params: Params, count) -> dict[str, float | None]:
    """`count(kind, subsets)` for each rule that reads prepared data (subsets None: all rows)."""
    counts = {f"prepare_data_{kind}": count(kind, None) for kind in DATA}
    counts["sft"] = count("sft", None)
    for aspect, cfg in params.reward.aspects.items():
        counts[f"reward_{aspect}"] = count("preference", cfg.subsets)
    for st in params.rl.stages:
        counts[f"rl_{st.name}"] = count("prompts", st.subsets)
    if params.rl.zero is not None:
        counts["rl_zero"] = count("prompts", params.rl.zero.subsets)
    if params.distill is not None:
        counts["distill_samples"] = count("prompts", params.distill.sampling.subsets)
    return counts


def received(work: Path, params: Params) -> dict[str, float | None]:
    """Rows each rule received in the rehearsal: the prepared rows in the subsets it reads."""
    rows = {kind: _rows(work / "results" / path) for kind, path in DATA.items()}
    return per_rule(params, lambda kind, subsets: sum(1 for r in rows[kind]
                                                      if not subsets or r.get("subset") in subsets))


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def full_rows(params: Params, root: Path) -> dict[str, float | None]:
    """Rows each rule would receive from the real datasets, before cleaning: each hub source's
    size from its fixture's rows.json (the dataset card's figures); None where a source it reads
    has no known size (a local file, a split the card does not give)."""

    def size(src) -> int | None:
        if not src.path.startswith("hf:"):
            return None
        name, _, query = src.path[3:].partition("?")
        sizes = root / standins.FIXTURES / name / "rows.json"
        key = urlencode({k: v[-1] for k, v in sorted(parse_qs(query).items()) if k != "revision"})
        return (json.loads(sizes.read_text()) if sizes.exists() else {}).get(key)

    def count(kind, subsets):
        sizes = [size(s) for s in params.data.sources.of(kind) if not subsets or s.subset in subsets]
        return None if not sizes or None in sizes else sum(sizes)

    return per_rule(params, count)


def mean_chars(work: Path) -> dict[str, float]:
    out = {}
    for kind, path in DATA.items():
        rows = _rows(work / "results" / path)
        texts = [sum(len(m.get("content") or "") for m in r.get("messages") or r.get("prompt") or []) +
                 len(json.dumps(r.get("chosen", ""))) for r in rows]
        if texts:
            out[kind] = sum(texts) / len(texts)
    return out


def problems(work: Path, params: Params, files: list[str]) -> list[str]:
    """What a passing Snakemake run can still hide: a rule that wrote no manifest, a stage that
    received no rows, a multi-GPU stage that ran in one process."""
    found = []
    got = received(work, params)
    for s in dag.stages(params, [str(work / f) for f in files]):
        manifest = work / s.outs[0] / "manifest.json"
        if not manifest.exists():
            found.append(f"{s.name}: did not run (no {s.outs[0]}/manifest.json)")
            continue
        if got.get(s.name) == 0:
            found.append(f"{s.name}: received no rows; add a data source with its subsets")
        launch = json.loads(manifest.read_text()).get("launch") or {}
        if s.launcher and (launch.get("world_size", 1) < 2 or not launch.get("backend")):
            found.append(f"{s.name}: meant for {s.resources.get('gpu')} GPUs but ran without a process group of "
                         f"several ranks ({launch})")
    return found


def write(params: Params, files: list[str], work: Path, out: Path, found: list, env: list[Package],
          clashes: list[str], *, snakemake_code: int, elapsed: float) -> Path:
    """preflight.md and preflight.html under `out`; returns the markdown's path."""
    table = dag.stages(params, [str(work / f) for f in files])
    got = received(work, params)
    full = full_rows(params, _root(work))
    costs = estimates.stage_costs(params, table, full, mean_chars(work))
    status = ("passed" if snakemake_code == 0 and not clashes else
              "FAILED (launch checks)" if clashes else f"FAILED (Snakemake exit {snakemake_code})")
    name = " + ".join(files[1:]) or files[0]
    lines = [f"# Pre-flight: {name}", "",
             f"Rehearsal on the CPU: **{status}** in {elapsed / 60:.1f} min. Every stage ran through Snakemake with "
             "the recipe's own rules, commands, launchers and parameters; what a CPU cannot hold was replaced by "
             "the stand-ins listed below. A rehearsal proves the DAG, the parameters, the data formats and the "
             "launch configuration; it cannot prove GPU kernels, memory or speed.", "",
             "Multi-GPU stages run under their own launcher with 2 CPU processes: on a CPU, accelerate runs an FSDP "
             "or DeepSpeed config as data parallel over gloo (not sharded), so each config's plugin was also built "
             "in-process and checked against the stage's training arguments as transformers' Trainer checks "
             "them at start-up: " + ("**" + "; ".join(clashes) + "**" if clashes else "no clash") + ".", "",
             "## Stages", "",
             "| rule | ran | GPUs | nodes | memory/GPU (GB, est.) | GPU-hours (est.) | rows (full data) | "
             "rows (rehearsal) | launch |", "|---|---|---|---|---|---|---|---|---|"]
    total = 0.0
    for s in table:
        m = work / s.outs[0] / "manifest.json"
        launch = json.loads(m.read_text()).get("launch", {}) if m.exists() else {}
        cost = costs.get(s.name, estimates.Cost())
        total += cost.gpu_hours or 0.0
        lines.append("| " + " | ".join([
            s.name, "yes" if m.exists() else "**no**", str(s.resources.get("gpu", 0)),
            str(s.resources.get("nodes", 1)), _num(cost.memory_gb), _num(cost.gpu_hours),
            _count(full.get(s.name)), _count(got.get(s.name)), _launch(launch)]) + " |")
    lines += ["", f"Estimated total: **{total:,.0f} GPU-hours**. {estimates.ASSUMPTIONS}.", "",
              "## Stand-ins", "", "| what | the recipe | the rehearsal | why |", "|---|---|---|---|"]
    lines += [f"| {s.key} | {s.recipe} | {s.rehearsal} | {s.why} |" for s in found]
    lines += ["", "## Packages", "", "| rule | environment | imports | stand-in (GPU image) | missing |",
              "|---|---|---|---|---|"]
    for rule in dict.fromkeys(p.stage for p in env):
        mine = [p for p in env if p.stage == rule]
        where = next((p.where for p in mine if p.where != "envs/gpu.txt"), "")
        lines.append(f"| {rule} | {where} | " + " | ".join(
            ", ".join(f"{p.package}" + (f" ({p.where})" if p.where == "envs/gpu.txt" else "")
                      for p in mine if p.status == status) for status in ("imports", "stand-in", "missing")) + " |")
    out.mkdir(parents=True, exist_ok=True)
    md = out / "preflight.md"
    md.write_text("\n".join(lines) + "\n")
    (out / "preflight.html").write_text(_html("\n".join(lines), name))
    return md


def _root(work: Path) -> Path:
    return (work / "Snakefile").resolve().parent


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}" if x < 10 else f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def _count(n: float | None) -> str:
    return "" if n is None else f"{n:,.0f}"


def _launch(launch: dict) -> str:
    if not launch:
        return ""
    if launch.get("world_size", 1) == 1:
        return "1 process"
    config = f", {launch['launcher']} config" + (f" v{launch['fsdp_version']}" if launch.get("fsdp_version") else "")
    return f"{launch['world_size']} processes ({launch.get('backend')})" + (config if launch.get("launcher") else "")


def _html(markdown: str, title: str) -> str:
    """The markdown's tables as HTML (no markdown library in the environment)."""
    body, table = [], []

    def flush():
        if table:
            head, *rows = [[html.escape(c.strip()) for c in r.strip("|").split("|")] for r in table
                           if not set(r) <= set("|-")]
            body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line:
            body.append("<p>" + BOLD.sub(r"<b>\1</b>", html.escape(line)) + "</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}th{background:#eee}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Pre-flight: {html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
