import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_OVERLAY = ROOT / "tests" / "data" / "tiny.yaml"
# Tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The rules call `posttrain`, `snakemake` and `dvc` from the environment running the tests.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def read_jsonl(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny random Llama resolved by the real base-model stage (tokenizer + ChatML template)."""
    from posttrain.config import load_params
    from posttrain.stages import base_model

    out = tmp_path_factory.mktemp("base") / "base"
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY])
    base_model.main(params, out)
    return out


@pytest.fixture(scope="session")
def embedded_base(tmp_path_factory):
    """The demo's real model (SmolLM2-135M-Instruct from the packaged GGUF), resolved once."""
    from posttrain.config import load_params
    from posttrain.stages import base_model

    out = tmp_path_factory.mktemp("embedded") / "smol"
    base_model.main(load_params([ROOT / "params.yaml"]), out)
    return out


@pytest.fixture
def project(tmp_path):
    """A copy of the pipeline definition in a fresh git repository, to run the real tools in."""
    dst = tmp_path / "proj"
    dst.mkdir()
    for name in ("Snakefile", "params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, dst / name)
    for name in ("rules", "recipes", "src", "profiles", "slurm", "envs"):
        shutil.copytree(ROOT / name, dst / name)
    shutil.copy(TINY_OVERLAY, dst / "tiny.yaml")
    if (ROOT / ".venv-export").exists():  # the export rules' environment (make setup builds it)
        (dst / ".venv-export").symlink_to((ROOT / ".venv-export").resolve())
    run(["git", "init", "-q"], dst)
    run(["git", "config", "user.email", "ci@example.com"], dst)
    run(["git", "config", "user.name", "CI"], dst)
    (dst / ".git" / "info" / "exclude").write_text(".venv-export\n.posttrain/\n.snakemake/\n")
    return dst


def run(cmd, cwd, check=True, env=None):
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    return res


def bin_path(name):
    return str(Path(sys.executable).parent / name)


@pytest.fixture
def stop_signal():
    """Sends this process SIGUSR1 with posttrain's handler installed (what SLURM sends before a
    time limit); the handler, the flag and the default action are put back afterwards."""
    import signal

    from posttrain import preemption

    preemption.install()
    yield lambda: os.kill(os.getpid(), signal.SIGUSR1)
    preemption.reset()
    for sig in preemption.SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
