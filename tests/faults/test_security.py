"""What a pipeline run must never do: run code that came with a model unless asked, load pickled
weights, or write a secret from the environment into an artifact."""

import logging
import subprocess

import pytest
import torch

from conftest import ROOT, TINY_OVERLAY, bin_path
from posttrain.config import load_params
from posttrain.models import sources as models

PLANTED = "hf_PlantedFakeTokenThatMustNeverLeak0123456789"


def test_trust_remote_code_is_off_unless_params_turn_it_on_and_then_it_is_logged(tiny_base, caplog):
    assert load_params([ROOT / "params.yaml"]).model.trust_remote_code is False
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        assert load_params([ROOT / "params.yaml", recipe]).model.trust_remote_code is False, recipe.name
    with caplog.at_level(logging.WARNING, logger="posttrain.models.sources"):
        models.resolve(str(tiny_base))
        assert "trust_remote_code" not in caplog.text
        models.resolve(str(tiny_base), trust_remote_code=True)
    assert f"model.trust_remote_code is on: {tiny_base} may run Python code" in caplog.text


def test_pickled_weights_are_refused(tmp_path, tiny_base):
    """A folder with only pytorch_model.bin (a pickle, which can run code when loaded) is not
    loaded; the error names the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    folder = tmp_path / "pickled"
    folder.mkdir()
    model.config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(OSError, match=f"could not load model '{folder}'.*safetensors"):
        models.resolve(str(folder))


def test_a_planted_token_appears_in_no_artifact_or_log(tmp_path):
    """HF_TOKEN set in the environment of real stage runs: no output file, manifest, model card
    or log mentions it (the whole tiny DAG is checked the same way in test_dag's end-to-end run)."""
    env = {"HF_TOKEN": PLANTED, "HUGGING_FACE_HUB_TOKEN": PLANTED, "PATH": str(ROOT / ".venv/bin") + ":/usr/bin:/bin"}
    common = ["--params", str(ROOT / "params.yaml"), "--params", str(TINY_OVERLAY)]
    logs = []
    for args in (["base-model", "--out", "base"], ["demo-data", "--out", "demo"],
                 ["prepare-data", "--kind", "sft", "--input", "demo/sft_alpaca.json", "--tokenizer", "base",
                  "--out", "data"]):
        res = subprocess.run([bin_path("posttrain"), *args, *common], cwd=tmp_path, env=env, capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        logs.append(res.stdout + res.stderr)
    assert PLANTED not in "".join(logs)
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]
    assert not leaks
    assert (tmp_path / "base/manifest.json").is_file() and (tmp_path / "data/manifest.json").is_file()
