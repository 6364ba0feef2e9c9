"""`posttrain` commands that are not stages: check-params, dag, plan, lineage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from posttrain.core.commands import params_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-params", help="validate parameter files and print the resolved parameters")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--explain", metavar="KEY", help="describe one key (e.g. sft.lora.r): type, default, meaning")
    g.add_argument("--write-docs", action="store_true", help="write docs/params.md, every key's reference")
    params_arg(p)
    p.set_defaults(run=check_params)

    p = sub.add_parser("plan", help="size a recipe's SFT, PPO and preference stages on the meta device: "
                                    "parameters, adapters, GPU memory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    params_arg(p)
    p.set_defaults(run=plan)

    p = sub.add_parser("dag", help="write or check dvc.yaml from the stage table")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="write dvc.yaml")
    g.add_argument("--check", action="store_true", help="fail if dvc.yaml differs from the stage table")
    g.add_argument("--mermaid", action="store_true", help="print the DAG as a Mermaid flowchart")
    p.add_argument("--recipe", action="append", default=[], metavar="FILE",
                   help="overlay a recipe (as `snakemake --configfile FILE`)")
    p.set_defaults(run=dag, params_free=True)

    p = sub.add_parser("lineage", help="where an artifact came from: its inputs, back to the raw data")
    p.add_argument("artifact", type=Path, help="an artifact folder, e.g. results/sft")
    p.add_argument("--json", action="store_true", help="print JSON instead of a tree")
    p.set_defaults(run=lineage, params_free=True)


def check_params(params, args: argparse.Namespace) -> int:
    import yaml

    from posttrain.config import docs

    if args.explain:
        print(docs.explain(args.explain))
        return 0
    if args.write_docs:
        Path(docs.DOC_PATH).write_text(docs.params_markdown())
        print(f"wrote {docs.DOC_PATH}")
        return 0
    print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def plan(params, args: argparse.Namespace) -> int:
    from posttrain.training.sizing import plan_ppo, plan_preference, plan_sft

    cfg = params.sft
    sft = plan_sft(params, gpus=max(cfg.gpus, 1), strategy=cfg.strategy)
    ppo = [plan_ppo(params, st.name, gpus=max(params.rl.gpus, 1)) for st in params.rl.stages if st.algorithm == "ppo"]
    preference = [plan_preference(params, st.name) for st in params.preference.stages]
    if args.json:
        print(json.dumps({**sft.as_dict(), "ppo": [p.as_dict() for p in ppo],
                          "preference": [p.as_dict() for p in preference]}, indent=2))
        return 0
    print(f"{params.model.base} ({sft.architecture}), sft.method={cfg.method}, {sft.gpus} GPU(s), {sft.strategy}")
    print(f"  total parameters      {sft.total_params:>16,}")
    print(f"  active per token      {sft.active_params_per_token:>16,}")
    print(f"  trainable parameters  {sft.trainable_params:>16,}  "
          f"({100 * sft.trainable_params / sft.total_params:.2f} %)")
    print(f"  adapters on           {', '.join(sft.adapter_modules)}")
    print(f"  router has adapters   {sft.router_has_adapter}")
    print("  memory per GPU (GB)   " + ", ".join(f"{k} {v}" for k, v in sft.memory_gb_per_gpu.items()))
    for p in ppo:
        print(f"PPO stage {p.stage}: one process, layers spread over {p.gpus} GPU(s), critic {p.critic_base}, "
              f"{p.rollout_sequences} rollout sequences of {p.sequence_tokens} tokens")
        print(f"  trainable parameters  policy {p.policy_trainable_params:,}, critic {p.critic_trainable_params:,}")
        print("  memory per GPU (GB)   " + ", ".join(f"{k} {v}" for k, v in p.memory_gb_per_gpu.items()))
    for p in preference:
        print(f"Preference stage {p.stage} ({p.algorithm}): {p.gpus} GPU(s), {p.strategy}, reference {p.reference}, "
              f"{p.sequences_per_step} sequences per GPU per step")
        print(f"  trainable parameters  {p.trainable_params:,}")
        print("  memory per GPU (GB)   " + ", ".join(f"{k} {v}" for k, v in p.memory_gb_per_gpu.items()))
    return 0


def dag(args: argparse.Namespace) -> int:
    from posttrain import dag
    from posttrain.config import load_params

    files = ["params.yaml", *args.recipe]
    table = dag.stages(load_params(files), files)
    if args.mermaid:
        print(dag.mermaid(table), end="")
        return 0
    text = dag.dvc_yaml(table)
    if args.write:
        dag.DVC_YAML.write_text(text)
        print(f"wrote {dag.DVC_YAML}")
    elif args.check:
        current = dag.DVC_YAML.read_text() if dag.DVC_YAML.exists() else ""
        if current != text:
            print(f"{dag.DVC_YAML} is out of date with the stage table and params; run `posttrain dag --write`",
                  file=sys.stderr)
            return 1
        print(f"{dag.DVC_YAML} is up to date")
    else:
        print(text, end="")
    return 0


def lineage(args: argparse.Namespace) -> int:
    from posttrain.core import lineage

    node = lineage.trace(args.artifact)
    print(json.dumps(node.to_dict(), indent=2) if args.json else lineage.render(node))
    return 0
