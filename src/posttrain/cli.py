"""`posttrain`: one subcommand per stage, plus tools for the DAG and parameters.

Rules call these commands; users can call them by hand. Every command validates the parameter
files first, so a typo fails before any work starts. Each stage module registers its own
subcommands (`register`); this module only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from posttrain.config import ConfigError, load_params
from posttrain.core import manifest, tracking
from posttrain.core.manifest import git_commit
from posttrain.dag import code

# Each command and the module that registers it, in the order `posttrain --help` lists them (the
# DAG's order, then the tools). A command imports only its own module: stage modules import torch
# and transformers, which take seconds, and every rule of the DAG starts one command.
COMMANDS = {
    "base-model": "stages.base_model", "demo-data": "stages.demo_data", "prepare-data": "stages.prepare_data",
    "sft": "stages.sft", "reward": "stages.reward", "rl": "stages.rl", "preference": "stages.preference",
    "student-base": "stages.distill", "distill-samples": "stages.distill", "distill": "stages.distill",
    "evaluate": "stages.evaluate",
    "export-merge": "stages.export", "export-gptq": "stages.export", "export-awq": "stages.export",
    "export-gguf": "stages.export", "export-gguf-lora": "stages.export", "export-check": "stages.export",
    "report": "stages.report", "publish-report": "stages.report",
    "check-params": "tools", "plan": "tools", "dag": "tools", "lineage": "tools", "rehearse": "rehearsal",
    "compare": "compare.command", "noise-bands": "compare.command", "ab": "ab.command",
    "serve": "serve.command",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of `command` alone (and so only its module imported)."""
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = [COMMANDS[command]] if command in COMMANDS else COMMANDS.values()
    for module in dict.fromkeys(modules):
        importlib.import_module(f"posttrain.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if getattr(args, "params_free", False):
            return args.run(args) or 0
        params = load_params(args.params)
        if COMMANDS[args.command].startswith("stages.") and getattr(args, "out", None) is not None:
            # a stage: the artifact it makes is one run of the experiment tracker
            tracking.configure(params.tracking, _artifact_name(args.out), git_commit())
            kind = args.command.replace("-", "_")          # `export-gptq` runs stage kind export_gptq
            manifest.record_code(code.digest(kind) if kind in code.KINDS else None)
        try:
            result = args.run(params, args)
        finally:
            tracking.abandon()     # a stage that stopped before its manifest: its run failed
        return result if isinstance(result, int) else 0
    except ConfigError as err:
        print(f"posttrain {args.command}: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError, RuntimeError, ArithmeticError) as err:
        print(f"posttrain {args.command}: error: {err}", file=sys.stderr)
        return 1


def _artifact_name(out) -> str:
    """`results/rl/helpfulness` -> `rl/helpfulness`: the artifact a run is about."""
    parts = Path(out).parts
    return "/".join(parts[parts.index("results") + 1:] if "results" in parts else parts[-2:])


if __name__ == "__main__":
    sys.exit(main())
