"""`posttrain`: one subcommand per stage, plus tools for the DAG and parameters.

Rules call these commands; users can call them by hand. Every command validates the parameter
files first, so a typo fails before any work starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from posttrain.config import ConfigError, load_params

log = logging.getLogger("posttrain")


def _params_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", action="append", metavar="FILE",
                   help="parameter file; repeat to overlay recipes (default: params.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("base-model", help="resolve model.base to a local HF folder")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("demo-data", help="generate the deterministic demo corpus")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("prepare-data", help="ingest, clean, decontaminate and split one data kind")
    p.add_argument("--kind", required=True, choices=["sft", "preference", "prompts", "eval"])
    p.add_argument("--input", action="append", default=[], metavar="FILE",
                   help="a .json/.jsonl/.jsonl.gz/.parquet file or hf:NAME[?name=CONFIG&split=SPLIT]; repeatable")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, help="base model folder, for the token-length filter")
    p.add_argument("--eval", type=Path, help="eval test.jsonl to decontaminate against")
    _params_arg(p)

    p = sub.add_parser("sft", help="supervised fine-tuning (LoRA, QLoRA or full) with TRL")
    p.add_argument("--base", type=Path, required=True, help="base model folder (results/base)")
    p.add_argument("--data", type=Path, required=True, help="prepared SFT data (results/data/sft)")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("reward", help="train a Bradley-Terry reward model for one aspect with TRL")
    p.add_argument("--aspect", required=True, help="a name under reward.aspects (e.g. helpful, safety)")
    p.add_argument("--init", type=Path, required=True, help="the model it starts from (results/sft or results/base)")
    p.add_argument("--data", type=Path, required=True, help="prepared preference data (results/data/preference)")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("rl", help="one RL stage (GRPO) of rl.stages, or the RL-first path (--stage zero)")
    p.add_argument("--stage", required=True, help="a name in rl.stages, or zero for rl.zero")
    p.add_argument("--init", type=Path, required=True, help="the model it starts from (results/sft, results/rl/NAME)")
    p.add_argument("--prompts", type=Path, required=True, help="prepared prompts (results/data/prompts)")
    p.add_argument("--reward", action="append", default=[], metavar="ASPECT=DIR",
                   help="a reward model the stage's reward_model terms use; repeatable")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("student-base", help="the untrained distillation student (a depth-pruned base, or distill.student.model)")
    p.add_argument("--base", type=Path, required=True, help="base model folder (results/base)")
    p.add_argument("--calibration", type=Path, help="prepared SFT data whose val rows rank layers "
                                                   "(distill.student.drop_least_important)")
    p.add_argument("--teacher", type=Path, help="the teacher, whose layers are pruned (distill.student.prune_from: "
                                                 "teacher)")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("distill-samples", help="rejection sampling: the teacher's verified answers as SFT rows")
    p.add_argument("--teacher", type=Path, required=True, help="the teacher model (results/rl/NAME or results/sft)")
    p.add_argument("--prompts", type=Path, required=True, help="prepared prompts (results/data/prompts)")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("distill", help="train the student on the teacher's answers (and logits), or --baseline")
    p.add_argument("--student", type=Path, required=True, help="the untrained student (results/distill/student_base)")
    p.add_argument("--data", type=Path, required=True, help="prepared SFT data (results/data/sft)")
    p.add_argument("--samples", type=Path, help="the distill-samples output (not with --baseline)")
    p.add_argument("--teacher", type=Path, help="the teacher model, for distill.level: logit")
    p.add_argument("--baseline", action="store_true", help="plain SFT on --data with the same settings")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("evaluate", help="run the eval suite on one model")
    p.add_argument("--model", type=Path, required=True, help="an artifact folder: results/base, results/sft, ...")
    p.add_argument("--name", required=True, help="the model's name in the report")
    p.add_argument("--eval-data", type=Path, required=True, help="prepared eval data (results/data/eval)")
    p.add_argument("--heldout", type=Path, help="prepared SFT data whose val split is scored for perplexity")
    p.add_argument("--reward", action="append", default=[], metavar="ASPECT=DIR",
                   help="a reward model (results/reward/ASPECT) that scores the responses; repeatable")
    p.add_argument("--reference", type=Path, help="the reference model's evaluation, for win_rate_vs_reference")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("export-merge", help="merged weights for serving (adapters folded in), with a model card")
    p.add_argument("--model", type=Path, required=True, help="an artifact folder: results/sft, results/rl/NAME, ...")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("export-gptq", help="4-bit GPTQ of a merged export (GPTQModel; run from .venv-export)")
    p.add_argument("--model", type=Path, required=True, help="an export-merge output")
    p.add_argument("--calibration", type=Path, required=True, help="prepared SFT data (results/data/sft)")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("export-awq", help="4-bit AWQ of a merged export (GPTQModel; run from .venv-export)")
    p.add_argument("--model", type=Path, required=True, help="an export-merge output")
    p.add_argument("--calibration", type=Path, required=True, help="prepared SFT data (results/data/sft)")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("export-gguf", help="a GGUF file of a merged export (llama.cpp, Ollama, vLLM)")
    p.add_argument("--model", type=Path, required=True, help="an export-merge output")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("export-gguf-lora", help="a 4-bit GGUF of a model's base and its LoRA adapter as a GGUF "
                                                "adapter (llama.cpp --lora)")
    p.add_argument("--model", type=Path, required=True, help="a stage output with adapter/: results/sft, ...")
    p.add_argument("--merged", type=Path, required=True, help="its export-merge output (the check's reference)")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("export-check", help="size ratios and eval deltas of quantized exports against the unquantized model")
    p.add_argument("--merged", type=Path, required=True, help="the export-merge output")
    p.add_argument("--quantized", action="append", default=[], metavar="FORMAT=DIR", required=True,
                   help="a quantized export; repeatable")
    p.add_argument("--eval", type=Path, required=True, help="the unquantized model's evaluation")
    p.add_argument("--quantized-eval", action="append", default=[], metavar="FORMAT=DIR", required=True,
                   help="a quantized export's evaluation; repeatable")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("report", help="one report over every evaluated model")
    p.add_argument("--eval", action="append", type=Path, default=[], required=True, help="an evaluate output; repeatable")
    p.add_argument("--curves", action="append", type=Path, default=[], help="a training stage output; repeatable")
    p.add_argument("--out", type=Path, required=True)
    _params_arg(p)

    p = sub.add_parser("plan", help="size a recipe's SFT and PPO stages on the meta device: parameters, adapters, GPU memory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _params_arg(p)

    p = sub.add_parser("dag", help="write or check dvc.yaml from the stage table")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="write dvc.yaml")
    g.add_argument("--check", action="store_true", help="fail if dvc.yaml differs from the stage table")
    p.add_argument("--recipe", action="append", default=[], metavar="FILE",
                   help="overlay a recipe (as `snakemake --configfile FILE`)")

    p = sub.add_parser("lineage", help="where an artifact came from: its inputs, back to the raw data")
    p.add_argument("artifact", type=Path, help="an artifact folder, e.g. results/sft")
    p.add_argument("--json", action="store_true", help="print JSON instead of a tree")

    p = sub.add_parser("check-params", help="validate parameter files and print the resolved parameters")
    _params_arg(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return _run(args)
    except ConfigError as err:
        print(f"posttrain {args.command}: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError, RuntimeError, ArithmeticError) as err:
        print(f"posttrain {args.command}: error: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "dag":
        return _dag(args)
    if args.command == "lineage":
        import json

        from posttrain.core import lineage

        node = lineage.trace(args.artifact)
        print(json.dumps(node.to_dict(), indent=2) if args.json else lineage.render(node))
        return 0
    params = load_params(args.params)
    if args.command == "check-params":
        import yaml

        print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    if args.command == "plan":
        return _plan(params, args.json)
    if args.command == "base-model":
        from posttrain.stages import base_model

        base_model.main(params, args.out)
    elif args.command == "demo-data":
        from posttrain.stages import demo_data

        demo_data.main(params, args.out)
    elif args.command == "prepare-data":
        from posttrain.stages import prepare_data

        prepare_data.main(params, args.kind, args.input, args.out, args.tokenizer, args.eval)
    elif args.command == "sft":
        from posttrain.stages import sft

        sft.main(params, args.base, args.data, args.out)
    elif args.command == "reward":
        from posttrain.stages import reward

        reward.main(params, args.aspect, args.init, args.data, args.out)
    elif args.command == "rl":
        from posttrain.stages import rl

        rl.main(params, args.stage, args.init, args.prompts, _pairs_arg(args.reward, "--reward"), args.out)
    elif args.command in ("student-base", "distill-samples", "distill"):
        from posttrain.stages import distill

        if args.command == "student-base":
            distill.student_base(params, args.base, args.out, calibration_dir=args.calibration,
                                     teacher_dir=args.teacher)
        elif args.command == "distill-samples":
            distill.samples(params, args.teacher, args.prompts, args.out)
        else:
            distill.student(params, args.student, args.data, args.out, samples_dir=args.samples,
                            teacher_dir=args.teacher, baseline=args.baseline)
    elif args.command == "evaluate":
        from posttrain.stages import evaluate

        evaluate.main(params, args.model, args.name, args.eval_data, args.heldout, args.out,
                      reward_dirs=_pairs_arg(args.reward, "--reward"), reference=args.reference)
    elif args.command in ("export-merge", "export-gptq", "export-awq", "export-gguf", "export-gguf-lora",
                          "export-check"):
        from posttrain.stages import export

        if args.command == "export-merge":
            export.merge(params, args.model, args.out)
        elif args.command in ("export-gptq", "export-awq"):
            quantize = export.gptq if args.command == "export-gptq" else export.awq
            quantize(params, args.model, args.calibration, args.out)
        elif args.command == "export-gguf":
            export.gguf(params, args.model, args.out)
        elif args.command == "export-gguf-lora":
            export.gguf_lora(params, args.model, args.merged, args.out)
        else:
            export.check(args.merged, _pairs_arg(args.quantized, "--quantized"), args.eval,
                         _pairs_arg(args.quantized_eval, "--quantized-eval"), args.out)
    elif args.command == "report":
        from posttrain.stages import report

        report.main(args.eval, args.curves, args.out)
    return 0


def _pairs_arg(values: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for v in values:
        key, sep, path = v.partition("=")
        if not sep or not key or not path:
            raise ValueError(f"{flag} {v!r}: expected NAME=DIR")
        out[key] = Path(path)
    return out


def _plan(params, as_json: bool) -> int:
    import json

    from posttrain.training.sizing import plan_ppo, plan_sft

    cfg = params.sft
    plan = plan_sft(params, gpus=max(cfg.gpus, 1), strategy=cfg.strategy)
    ppo = [plan_ppo(params, st.name, gpus=max(params.rl.gpus, 1)) for st in params.rl.stages if st.algorithm == "ppo"]
    if as_json:
        print(json.dumps({**plan.as_dict(), "ppo": [p.as_dict() for p in ppo]}, indent=2))
        return 0
    print(f"{params.model.base} ({plan.architecture}), sft.method={cfg.method}, {plan.gpus} GPU(s), {plan.strategy}")
    print(f"  total parameters      {plan.total_params:>16,}")
    print(f"  active per token      {plan.active_params_per_token:>16,}")
    print(f"  trainable parameters  {plan.trainable_params:>16,}  ({100 * plan.trainable_params / plan.total_params:.2f} %)")
    print(f"  adapters on           {', '.join(plan.adapter_modules)}")
    print(f"  router has adapters   {plan.router_has_adapter}")
    print("  memory per GPU (GB)   " + ", ".join(f"{k} {v}" for k, v in plan.memory_gb_per_gpu.items()))
    for p in ppo:
        print(f"PPO stage {p.stage}: one process, layers spread over {p.gpus} GPU(s), critic {p.critic_base}, "
              f"{p.rollout_sequences} rollout sequences of {p.sequence_tokens} tokens")
        print(f"  trainable parameters  policy {p.policy_trainable_params:,}, critic {p.critic_trainable_params:,}")
        print("  memory per GPU (GB)   " + ", ".join(f"{k} {v}" for k, v in p.memory_gb_per_gpu.items()))
    return 0


def _dag(args: argparse.Namespace) -> int:
    from posttrain.dag import pipeline

    files = ["params.yaml", *args.recipe]
    text = pipeline.dvc_yaml(pipeline.stages(load_params(files), files))
    if args.write:
        pipeline.DVC_YAML.write_text(text)
        print(f"wrote {pipeline.DVC_YAML}")
    elif args.check:
        current = pipeline.DVC_YAML.read_text() if pipeline.DVC_YAML.exists() else ""
        if current != text:
            print(f"{pipeline.DVC_YAML} is out of date with the stage table and params; "
                  f"run `posttrain dag --write`", file=sys.stderr)
            return 1
        print(f"{pipeline.DVC_YAML} is up to date")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
