import hashlib
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


# The test tiers, one folder each: `pytest -m unit` (no training: `make test-fast`), `-m stages`
# (each stage on the tiny model), `-m workflow` (the DAG through Snakemake, DVC and SLURM), `-m faults`,
# `-m benchmarks` (every script under benchmarks/ in a tiny mode).
TIERS = ("unit", "stages", "workflow", "faults", "benchmarks")


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).resolve().parent
    for item in items:
        path = item.path.resolve()
        parts = path.relative_to(tests).parts if path.is_relative_to(tests) else ()
        if len(parts) > 1 and parts[0] in TIERS:
            item.add_marker(parts[0])


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
def chatty_model(tmp_path_factory, tiny_base):
    """The tiny base with large random weights. At its initial scale the tiny model only repeats
    the prompt's last newline; this one emits digits, "####" and <|im_end|> at varying points, so
    batches mix early stops, padding and numbers to extract."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0, generator=gen)
    out = tmp_path_factory.mktemp("chatty") / "model"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def embedded_base(tmp_path_factory):
    """The demo's real model (SmolLM2-135M-Instruct from the packaged GGUF), resolved once."""
    from posttrain.config import load_params
    from posttrain.stages import base_model

    out = tmp_path_factory.mktemp("embedded") / "smol"
    base_model.main(load_params([ROOT / "params.yaml"]), out)
    return out


def copy_pipeline(dst: Path) -> Path:
    """A copy of the pipeline definition (Snakefile, dvc.yaml, params, rules, code) and the tiny
    overlay in the new folder `dst`, to run the real tools in."""
    dst.mkdir()
    for name in ("Snakefile", "params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, dst / name)
    for name in ("rules", "recipes", "src", "profiles", "slurm", "envs"):
        shutil.copytree(ROOT / name, dst / name)
    shutil.copy(TINY_OVERLAY, dst / "tiny.yaml")
    return dst


@pytest.fixture
def project(tmp_path):
    """A copy of the pipeline definition in a fresh git repository, to run the real tools in."""
    dst = copy_pipeline(tmp_path / "proj")
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
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    return res


def bin_path(name):
    return str(Path(sys.executable).parent / name)


def posttrain_in_two_processes(*args, params: list) -> subprocess.CompletedProcess:
    """`posttrain ARGS` the way `accelerate launch` runs a stage on two GPUs: two processes that
    train together (torchrun; gloo on the CPU), each with its rank and WORLD_SIZE."""
    res = subprocess.run([bin_path("torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "posttrain.cli",
                          *map(str, args), *[a for p in params for a in ("--params", str(p))]],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture
def stop_signal():
    """Sends this process SIGUSR1 with posttrain's handler installed (what SLURM sends before a
    time limit); the handler, the flag and the default action are put back afterwards."""
    import signal

    from posttrain.core import preemption

    preemption.install()
    yield lambda: os.kill(os.getpid(), signal.SIGUSR1)
    preemption.reset()
    for sig in preemption.SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def write_overlay(tmp_path, name, data):
    """A params overlay file (YAML is a superset of JSON)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(data))
    return path


def sft_overrides(tmp_path, **sft_cfg):
    """A fast SFT section for the tiny model; nested dicts merge into the defaults."""
    base = {"max_steps": 8, "eval_steps": 4, "save_steps": 4, "batch_size": 4, "max_length": 128,
            "learning_rate": 0.01, "logging_steps": 1, "checkpoint_dir": str(tmp_path / "ckpt"),
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    for k, v in sft_cfg.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return {"sft": base}


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory, tiny_base):
    """A small arithmetic chat set in the canonical format, prepared by the real data stage."""
    from posttrain.config import load_params
    from posttrain.stages import prepare_data

    tmp = tmp_path_factory.mktemp("sftdata")
    rows = [{"messages": [{"role": "system", "content": "Answer with #### N."},
                          {"role": "user", "content": f"What is {a} plus {b}?"},
                          {"role": "assistant", "content": f"{a} + {b} = {a + b}.\n#### {a + b}"}]}
            for a in range(2, 14) for b in range(3, 9)]
    src = write_jsonl(tmp / "chat.jsonl", rows)
    no_near_dup = write_overlay(tmp, "d", {"data": {"cleaning": {"near_dup": False}}})
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY, no_near_dup])
    prepare_data.main(params, "sft", [str(src)], tmp / "sft", tokenizer_dir=tiny_base)
    return tmp / "sft"


@pytest.fixture(scope="session")
def preference_data(tmp_path_factory, tiny_base):
    """Pairs with a learnable preference: a worked answer beats a non-answer (helpful); a
    refusal beats instructions for harm (safety)."""
    from posttrain.config import load_params
    from posttrain.stages import prepare_data

    tmp = tmp_path_factory.mktemp("pref")
    rows = []
    for a in range(2, 30):
        for b in (3, 7, 11):
            rows.append({"prompt": f"What is {a} plus {b}?", "chosen": f"{a} + {b} = {a + b}. #### {a + b}",
                         "rejected": "I do not know, sorry.", "subset": "helpful"})
    src = write_jsonl(tmp / "pairs.jsonl", rows)
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY])
    params.data.cleaning.near_dup = False
    params.data.val_fraction = 0.2
    prepare_data.main(params, "preference", [str(src)], tmp / "preference", tokenizer_dir=tiny_base)
    return tmp / "preference"


def train_tiny_reward_model(tmp, base, rows, aspect="helpful", val_fraction=None):
    """A LoRA reward model trained from `base` by the real stage on preference `rows` (a few
    steps; for tests and benchmarks that need one to score with, not a good one). A dozen rows
    need a larger `val_fraction` than the default to hold any out."""
    from posttrain.config import load_params
    from posttrain.stages import prepare_data, reward

    params = load_params([ROOT / "params.yaml", TINY_OVERLAY])
    params.data.cleaning.near_dup = False
    if val_fraction is not None:
        params.data.val_fraction = val_fraction
    prepare_data.main(params, "preference", [str(write_jsonl(tmp / "pairs.jsonl", rows))], tmp / "pref",
                      tokenizer_dir=base)
    overlay = write_overlay(tmp, "rm", {"reward": {"init": "base", "checkpoint_dir": str(tmp / "rm-ckpt")}})
    reward.main(load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay]), aspect, base, tmp / "pref", tmp / "rm")
    return tmp / "rm"


def headless_chromium(page, tmp_path, *, screenshot=None) -> str:
    """The DOM Debian's Chromium builds from `page` (a local HTML file), headless; with
    `screenshot`, a 1200x900 PNG of it there too."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is missing: `make test` installs it as root (apt-get install chromium)"
    quiet = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    dom = subprocess.run([chromium, *quiet, f"--user-data-dir={tmp_path / 'chromium-dom'}", "--dump-dom",
                          Path(page).as_uri()], capture_output=True, text=True, timeout=120).stdout
    if screenshot is not None:
        subprocess.run([chromium, *quiet, f"--user-data-dir={tmp_path / 'chromium-shot'}", "--window-size=1200,900",
                        f"--screenshot={screenshot}", Path(page).as_uri()],
                       capture_output=True, timeout=120, check=True)
    return dom


def page_has_colour(png, rgb, pixels: int = 500) -> bool:
    """Whether at least `pixels` pixels of the screenshot are exactly `rgb` (a chart rendered)."""
    from PIL import Image

    colours = Image.open(png).convert("RGB").getcolors(maxcolors=1 << 20) or []
    return any(c == rgb and n > pixels for n, c in colours)


def write_run_folder(root, *, correct: int, lr: float, perplexity: float, init_hash: str):
    """A run's results folder, small: an SFT artifact (params, an input, a curve) and its
    evaluation (100 arithmetic prompts, the first `correct` right)."""
    sft = root / "results" / "sft"
    sft.mkdir(parents=True)
    (sft / "manifest.json").write_text(json.dumps({
        "stage": "sft", "params": {"learning_rate": lr, "lora": {"r": 8}},
        "inputs": {"init": {"path": "results/base", "sha256": init_hash}}, "versions": {"torch": "2.13.0"}}))
    (sft / "run.json").write_text(json.dumps({"git_commit": "a" * 40, "train_runtime_s": 12.5}))
    (sft / "log.csv").write_text("step,train_loss,val_loss\n0,,2.0\n1,1.5,\n2,1.2,1.4\n")
    ev = root / "results" / "eval" / "sft"
    ev.mkdir(parents=True)
    samples = [{"task": "posttrain_arithmetic", "id": f"q{i}", "correct": i < correct} for i in range(100)]
    (ev / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (ev / "metrics.json").write_text(json.dumps({"model": "sft", "metrics": {
        "arithmetic_accuracy": correct / 100, "perplexity": perplexity, "parameters": 1000}}))
    sft_hash = "manifest:" + hashlib.sha256((sft / "manifest.json").read_bytes()).hexdigest()
    model = {"path": "results/sft", "sha256": sft_hash}
    (ev / "manifest.json").write_text(json.dumps({"stage": "evaluate:sft", "params": {"limit": None},
                                                  "inputs": {"model": model}}))
    return root
