"""Export: merged weights for serving, 4-bit GPTQ in its own environment, and the quality check."""

import json
import subprocess

import pytest
import torch

from conftest import ROOT, TINY_OVERLAY, write_jsonl
from posttrain.config import load_params
from posttrain.models.artifacts import resolve_model
from posttrain.stages import export, prepare_data, sft

EXPORT_BIN = ROOT / ".venv-export" / "bin"


def _params(tmp_path, **export_cfg):
    overlay = tmp_path / "export.yaml"
    cfg = {"gptq": {"group_size": 32, "calibration_rows": 8, "calibration_max_length": 64}, **export_cfg}
    overlay.write_text(json.dumps({"export": cfg}))
    return load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay]), overlay


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory, tiny_base):
    """A LoRA SFT output (adapter/ on the tiny base) and its data, from the real stages."""
    tmp = tmp_path_factory.mktemp("export_sft")
    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                          {"role": "assistant", "content": f"{a} + {b} = {a + b}.\n#### {a + b}"}],
             "subset": "arithmetic" if a % 2 else "sums"} for a in range(2, 12) for b in range(3, 7)]
    overlay = tmp / "o.yaml"
    overlay.write_text(json.dumps({"data": {"cleaning": {"near_dup": False}},
                                   "sft": {"max_steps": 3, "learning_rate": 0.02, "max_length": 64,
                                           "checkpoint_dir": str(tmp / "ckpt"), "lora": {"dropout": 0.0}}}))
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay])
    prepare_data.main(params, "sft", [str(write_jsonl(tmp / "chat.jsonl", rows))], tmp / "data",
                      tokenizer_dir=tiny_base)
    sft.main(params, tiny_base, tmp / "data", tmp / "sft")
    return tmp / "sft", tmp / "data"


@pytest.fixture(scope="module")
def merged(tmp_path_factory, sft_model):
    out = tmp_path_factory.mktemp("export") / "merged"
    params, _ = _params(out.parent)
    export.merge(params, sft_model[0], out)
    return out


def test_merge_writes_a_servable_model_with_the_adapters_folded_in(merged, sft_model, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((merged / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert not (merged / "adapter_config.json").exists()
    metrics = json.loads((merged / "metrics.json").read_text())
    assert metrics["top1_agreement"] >= 0.9 and metrics["max_logit_diff"] < 0.5
    # about half the fp32 merge the SFT stage wrote
    fp32 = export.weights_mb(sft_model[0] / "merged")
    assert 0.45 < metrics["size_mb"] / fp32 < 0.55
    # the export computes what the base with its adapter computes
    tokenizer = AutoTokenizer.from_pretrained(merged)
    ids = tokenizer.apply_chat_template(export.PROBE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    served = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    source = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), sft_model[0] / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    with torch.no_grad():
        got, want, before = (m(**ids).logits for m in (served, source, base))
    assert torch.allclose(got, want, atol=0.1)
    assert not torch.allclose(want, before, atol=1e-3)       # the adapter changed the model
    # serving: sampling defaults that stop at the end of turn, a card with the vLLM command
    gen = json.loads((merged / "generation_config.json").read_text())
    assert gen["do_sample"] is True and gen["temperature"] == 0.7
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]
    card = (merged / "README.md").read_text()
    assert "vllm serve" in card and "--generation-config auto" in card
    assert (merged / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (merged / "tokenizer_config.json").read_text())
    manifest = json.loads((merged / "manifest.json").read_text())
    assert manifest["stage"] == "export-merge" and manifest["inputs"]["model"]["path"] == str(sft_model[0])


def test_merge_folds_moe_expert_adapters(tmp_path, sft_model):
    from safetensors.torch import load_file

    from posttrain.stages import base_model

    params = load_params([ROOT / "params.yaml", TINY_OVERLAY])
    base = tmp_path / "moe"
    overlay = tmp_path / "moe.yaml"
    overlay.write_text(json.dumps({"model": {"base": "tiny:qwen3_moe"}, "export": {},
                                   "sft": {"max_steps": 2, "learning_rate": 0.02, "max_length": 64,
                                           "checkpoint_dir": str(tmp_path / "ckpt"),
                                           "lora": {"target_modules": ["q_proj", "v_proj"],
                                                    "target_parameters": ["mlp.experts.gate_up_proj"],
                                                    "dropout": 0.0}}}))
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay])
    base_model.main(params, base)
    sft.main(params, base, sft_model[1], tmp_path / "sft")
    export.merge(params, tmp_path / "sft", tmp_path / "merged")
    got, before = load_file(tmp_path / "merged" / "model.safetensors"), load_file(base / "model.safetensors")
    # saved per expert (transformers' checkpoint layout): the fused gate_up adapter reached every
    # expert's gate and up projections, and nothing else in the MLP
    same = {k: torch.equal(got[k], before[k].to(torch.bfloat16)) for k in before if ".mlp.experts." in k}
    adapted = [k for k in same if k.endswith(("gate_proj.weight", "up_proj.weight"))]
    assert adapted and not any(same[k] for k in adapted)
    assert all(same[k] for k in same if k.endswith("down_proj.weight"))
    routers = [k for k in before if k.endswith("mlp.gate.weight")]
    assert routers and all(torch.equal(got[k], before[k].to(torch.bfloat16)) for k in routers)


def test_gptq_outside_the_export_environment_says_where_to_run_it(tmp_path, merged, sft_model):
    params, _ = _params(tmp_path)
    with pytest.raises(RuntimeError, match=r"\.venv-export"):
        export.gptq(params, merged, sft_model[1], tmp_path / "gptq")
    assert not (tmp_path / "gptq").exists()


def test_a_group_size_the_layers_cannot_use_is_refused_before_calibration(merged):
    export.check_group_size(merged, 32)                    # the tiny model is 64 wide, its MLP 128
    with pytest.raises(ValueError, match=r"group_size 128 does not divide .*\(64\); use 64"):
        export.check_group_size(merged, 128)


@pytest.fixture(scope="module")
def wide_merged(tmp_path_factory, tiny_base):
    """The merged export of a tiny model whose every layer is a multiple of 64 wide (AWQ's
    clipping search works in blocks of 64 output rows; the tiny model's k/v are 32 wide)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from posttrain.core.manifest import write_manifest

    tmp = tmp_path_factory.mktemp("wide")
    config = AutoConfig.from_pretrained(tiny_base)
    config.head_dim = 32
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    write_manifest(tmp / "model", stage="base-model", params={}, seed=0, chat_template=tokenizer.chat_template)
    params, _ = _params(tmp)
    export.merge(params, tmp / "model", tmp / "merged")
    return tmp / "merged"


def test_awq_refuses_layers_its_clipping_search_cannot_split(merged):
    with pytest.raises(ValueError, match=r"not a multiple of 64 \(k_proj \(32\), v_proj \(32\)\).*use gptq"):
        export.check_awq_widths(merged)


@pytest.fixture(scope="module", params=["gptq", "awq"])
def quantized(request, tmp_path_factory, merged, wide_merged, sft_model):
    """(method, folder): the 4-bit export made by the export environment's posttrain (as the
    DAG's rule runs it), with GPTQModel's GPTQ and its AWQ."""
    method = request.param
    tmp = tmp_path_factory.mktemp(method)
    _, overlay = _params(tmp, awq={"group_size": 32, "calibration_rows": 8, "calibration_max_length": 64})
    out = tmp / method
    source = merged if method == "gptq" else wide_merged
    res = subprocess.run([str(EXPORT_BIN / "posttrain"), f"export-{method}", "--model", str(source), "--calibration",
                          str(sft_model[1]), "--out", str(out), "--params", str(ROOT / "params.yaml"),
                          "--params", str(TINY_OVERLAY), "--params", str(overlay)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    return method, out, source


def test_quantized_export_is_4bit_smaller_and_describes_itself(quantized):
    method, folder, merged = quantized
    config = json.loads((folder / "config.json").read_text())
    q = config["quantization_config"]
    assert q["quant_method"] == method and q["bits"] == 4 and q["group_size"] == 32
    if method == "awq":       # what vLLM's AWQ kernels read: zero points, GEMM layout, float16
        assert q["zero_point"] is True and q["version"] == "gemm" and config["dtype"] == "float16"
    else:                     # calibrated in float32 on a CPU, stored in the merged export's dtype
        from safetensors import safe_open

        dtype = json.loads((merged / "config.json").read_text())["dtype"]
        assert config["dtype"] == dtype
        assert json.loads((folder / "metrics.json").read_text())["calibration_dtype"] == "float32"
        unquantized = set()
        for shard in folder.glob("*.safetensors"):
            with safe_open(shard, "pt") as f:
                unquantized |= {f.get_slice(k).get_dtype() for k in f.keys()
                                if k.endswith(("norm.weight", "embed_tokens.weight"))}
        assert unquantized == {{"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[dtype]}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["calibration_rows"] == 8 and metrics["calibration_tokens"] <= 8 * 64
    assert metrics["size_ratio"] == pytest.approx(export.weights_mb(folder) / export.weights_mb(merged), abs=1e-3)
    assert metrics["size_ratio"] < 1.0
    assert f"--quantization {method}" in (folder / "README.md").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["versions"]["gptqmodel"] == "7.7.0" and manifest["stage"] == f"export-{method}"
    assert json.loads((folder / "generation_config.json").read_text()) == json.loads(
        (merged / "generation_config.json").read_text())


def test_quantized_export_reloads_in_transformers_and_generates_on_cpu(quantized):
    _, folder, merged = quantized
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "path, merged = sys.argv[1], sys.argv[2]\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "model = AutoModelForCausalLM.from_pretrained(path)\n"
        # GPTQModel picks its CPU kernel by what the CPU offers (TorchAten..., TorchCpuAvx512...):
        # any of its quantized linear layers counts
        "from gptqmodel.nn_modules.qlinear import BaseQuantLinear\n"
        "kinds = {type(m).__name__ for m in model.modules()}\n"
        "assert any(isinstance(m, BaseQuantLinear) for m in model.modules()), kinds\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'What is 2 plus 3?'}],"
        " add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "out = model.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)\n"
        "new = out[0, ids['input_ids'].shape[1]:]\n"
        "print('NEW', len(new), repr(tok.decode(new)))\n"
        "full = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)\n"
        "with torch.no_grad():\n"
        "    a, b = model(**ids).logits.float(), full(**ids).logits\n"
        "print('AGREE', float((a.argmax(-1) == b.argmax(-1)).float().mean()))\n")
    res = subprocess.run([str(EXPORT_BIN / "python"), "-c", script, str(folder), str(merged)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines() if line.startswith(("NEW", "AGREE")))
    assert int(lines["NEW"].split()[0]) == 8
    # 4-bit weights move the logits, but mostly not the next-token choice
    assert float(lines["AGREE"]) >= 0.5


def test_dequantized_weights_compute_what_the_kernels_compute(quantized, tmp_path):
    """The CPU evaluation runs on the dequantized weights: they must be the kernels' numbers."""
    from posttrain.export import gptq_format

    method, folder, _ = quantized
    assert gptq_format.quantization_config(folder)["quant_method"] == method
    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from posttrain.export.gptq_format import dequantize_folder\n"
        "path, dst = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "ids = tok('What is 2 plus 3? It is 5, since 2 and 3 make 5.', return_tensors='pt')\n"
        "kernel = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)\n"
        "dense = AutoModelForCausalLM.from_pretrained(dequantize_folder(path, dst))\n"
        "assert not hasattr(dense.config, 'quantization_config')\n"
        "with torch.no_grad():\n"
        "    a, b = kernel(**ids).logits, dense(**ids).logits\n"
        "print('DIFF', float((a - b).abs().max()), float((a.argmax(-1) == b.argmax(-1)).float().mean()))\n")
    res = subprocess.run([str(EXPORT_BIN / "python"), "-c", script, str(folder), str(tmp_path / "dense")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    diff, agree = map(float, next(x for x in res.stdout.splitlines() if x.startswith("DIFF")).split()[1:])
    assert diff < 0.05 and agree == 1.0


def test_check_records_size_ratio_and_metric_deltas(tmp_path, quantized):
    def evaluation(folder, metrics):
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))
        (folder / "manifest.json").write_text(json.dumps({"stage": f"evaluate:{folder.name}"}))
        return folder

    method, folder, merged = quantized
    full = evaluation(tmp_path / "sft", {"arithmetic_accuracy": 0.30, "perplexity": 3.0, "format_accuracy": 0.2})
    quant = evaluation(tmp_path / f"sft_{method}", {"arithmetic_accuracy": 0.29, "perplexity": 3.15})
    metrics = export.check(merged, {method: folder}, full, {method: quant}, tmp_path / "check")
    assert metrics[f"arithmetic_accuracy_delta_{method}"] == pytest.approx(-0.01)
    assert metrics[f"perplexity_change_{method}"] == pytest.approx(0.05)
    assert f"format_accuracy_{method}" not in metrics              # not measured on both
    assert metrics[f"size_ratio_{method}"] == pytest.approx(
        json.loads((folder / "metrics.json").read_text())["size_ratio"], abs=1e-3)
    assert json.loads((tmp_path / "check" / "metrics.json").read_text()) == metrics
    with pytest.raises(ValueError, match=f"--quantized-eval {method}"):
        export.check(merged, {method: folder}, full, {}, tmp_path / "check2")


# --- GGUF ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_exports(tmp_path_factory, merged):
    """The tiny merged model as GGUF in float32 (the layout alone) and in q8_0 / q4_0."""
    tmp = tmp_path_factory.mktemp("gguf")
    out = {}
    for kind in ("f32", "q8_0", "q4_0"):
        params, _ = _params(tmp, formats=["gguf"], gguf={"type": kind, "embeddings": kind,
                                                                    "tokenizer_pre": "gpt-2"})
        out[kind] = tmp / kind
        export.gguf(params, merged, out[kind])
    return out


def test_gguf_in_float32_computes_exactly_what_the_merged_model_computes(gguf_exports, merged):
    # any mistake in tensor names, the rotary row permutation or the tied head shows here
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_exports["f32"]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    ids = tokenizer(["Tom has 12 apples and buys 7 more."], return_tensors="pt")
    source = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    served = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model-f32.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(served(**ids).logits, source(**ids).logits, atol=1e-4)
    assert json.loads((folder / "metrics.json").read_text())["top1_agreement"] == 1.0


def test_gguf_export_is_smaller_describes_itself_and_generates_on_cpu(gguf_exports, merged):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    q8, q4 = (json.loads((gguf_exports[k] / "metrics.json").read_text()) for k in ("q8_0", "q4_0"))
    # bf16 is 16 bits a weight; q8_0 8.5, q4_0 4.5 (a scale per 32 weights); norms stay float32,
    # and the tiny model's vocabulary and merges are a visible share of its file
    assert 0.5 < q8["size_ratio"] < 0.62 and q4["size_ratio"] < 0.7 * q8["size_ratio"]
    assert q8["top1_agreement"] >= 0.9
    reader = gguf.GGUFReader(gguf_exports["q4_0"] / "model-q4_0.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q4_0" and types["blk.0.attn_q.weight"] == "Q4_0"
    assert types["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in types   # tied head
    field = reader.fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == "gpt-2"    # the tiny tokenizer's GPT-2 regex
    assert "tokenizer.chat_template" in reader.fields and "tokenizer.ggml.merges" in reader.fields

    folder = gguf_exports["q8_0"]
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model-q8_0.gguf")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template(export.PROBE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8 and tokenizer.decode(out[0, -8:])
    card = (folder / "README.md").read_text()
    assert f"llama-server -m {folder}/model-q8_0.gguf" in card and f"--tokenizer {folder}" in card
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stage"] == "export-gguf" and manifest["inputs"]["merged"]["path"] == str(merged)
    assert not list(folder.parent.glob(".*.tmp"))


def test_gguf_embeddings_can_keep_more_bits_than_the_layers(tmp_path, merged):
    import gguf

    params, _ = _params(tmp_path, formats=["gguf"], gguf={"type": "q4_1", "embeddings": "q8_0"})
    metrics = export.gguf(params, merged, tmp_path / "gguf")
    assert metrics["tensors"]["q8_0"] == 1 and metrics["tensors"]["q4_1"] > 1
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "gguf/model-q4_1.gguf").tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.1.ffn_down.weight"] == "Q4_1"


def test_gguf_refuses_what_it_cannot_write(tmp_path, merged):
    from transformers import GPT2Config, Qwen3MoeConfig

    from posttrain.export import gguf_export

    with pytest.raises(ValueError, match="convert_hf_to_gguf.py"):
        gguf_export.architecture(GPT2Config())
    with pytest.raises(ValueError, match="dense layers"):
        gguf_export.architecture(Qwen3MoeConfig(norm_topk_prob=True, mlp_only_layers=[0]))
    with pytest.raises(ValueError, match="norm_topk_prob: false"):
        gguf_export.architecture(Qwen3MoeConfig(norm_topk_prob=False))
    with pytest.raises(ValueError, match="q3_k"):
        _params(tmp_path, formats=["gguf"], gguf={"type": "q3_k"})
    assert not (tmp_path / "gguf").exists()


def test_a_gguf_export_is_evaluated_on_its_dequantized_weights(gguf_exports, tmp_path):
    from transformers import AutoModelForCausalLM

    from posttrain.stages import evaluate

    folder = gguf_exports["q4_0"]
    info = evaluate._dequantized_copy(folder, tmp_path / "eval")
    assert info["method"] == "gguf" and info["file"] == "model-q4_0.gguf"
    plain = AutoModelForCausalLM.from_pretrained(info["folder"])
    served = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model-q4_0.gguf", dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, served(input_ids=ids).logits)
    assert (info["folder"] / "tokenizer.json").is_file() and (info["folder"] / "generation_config.json").is_file()


def test_an_adapter_is_evaluated_merged_into_its_base_as_it_is_served(sft_model, merged, tiny_base):
    from transformers import AutoModelForCausalLM

    from posttrain.stages import evaluate

    model = evaluate._load(tiny_base, sft_model[0] / "adapter", "float32")
    assert not any("lora" in name for name, _ in model.named_parameters())   # folded in, not beside
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    # evaluate.dtype bfloat16: folded into the float32 weights first, then cast
    half = evaluate._load(tiny_base, sft_model[0] / "adapter", "bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert not any("lora" in name for name, _ in half.named_parameters())
    served = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, served(input_ids=ids).logits, atol=2e-2, rtol=0)


def _random_adapter(base, out, **lora):
    """A LoRA adapter with random A and B (PEFT's own layout), and what PEFT computes with it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                        **lora)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return peft_model.eval()


@pytest.mark.parametrize("lora", [{}, {"use_rslora": True, "alpha_pattern": {"k_proj": 2}}],
                         ids=["plain", "rslora-and-alpha-pattern"])
def test_a_lora_adapter_as_gguf_is_applied_as_peft_applies_it(tmp_path, tiny_base, lora):
    # tensor names, the rotary permutation of q/k's B, the scale (alpha / rank, rsLoRA's and the
    # patterns folded into B): any mistake moves the logits
    import gguf

    from posttrain.export import gguf_adapter, gguf_export
    from posttrain.models import sources as models

    peft_model = _random_adapter(tiny_base, tmp_path / "adapter", **lora)
    gguf_export.write(tiny_base, tmp_path / "base.gguf", weights="f32", embeddings="f32", name="base")
    counts = gguf_adapter.write(tmp_path / "adapter", tiny_base, tmp_path / "adapter.gguf", type="f32", name="a")
    layers = json.loads((tiny_base / "config.json").read_text())["num_hidden_layers"]
    assert counts == {"f32": 2 * 7 * layers}
    reader = gguf.GGUFReader(tmp_path / "adapter.gguf")
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("adapter.type").contents() == "lora"
    assert reader.get_field("adapter.lora.alpha").contents() == 8.0
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    assert shapes["blk.0.ffn_gate.weight.lora_a"][1] == 4 and shapes["blk.0.ffn_gate.weight.lora_b"][0] == 4

    model = models.load_gguf(tmp_path / "base.gguf").model
    assert gguf_adapter.apply(model, tmp_path / "adapter.gguf") == 7 * layers
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 22, 40]])
    with torch.no_grad():
        want, got = peft_model(input_ids=ids).logits, model(input_ids=ids).logits
        before = models.load_gguf(tmp_path / "base.gguf").model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert (want - before).abs().max() > 1e-2                      # the adapter does change the model


def test_what_a_gguf_adapter_cannot_carry_is_refused(tmp_path, tiny_base):
    from posttrain.export import gguf_adapter

    _random_adapter(tiny_base, tmp_path / "dora", use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        gguf_adapter.write(tmp_path / "dora", tiny_base, tmp_path / "x.gguf", type="f16", name="x")
    _random_adapter(tiny_base, tmp_path / "saved", modules_to_save=["lm_head"])
    with pytest.raises(ValueError, match="modules_to_save"):
        gguf_adapter.write(tmp_path / "saved", tiny_base, tmp_path / "x.gguf", type="f16", name="x")
    with pytest.raises(ValueError, match="f32, f16 or q8_0"):
        gguf_adapter.write(tmp_path / "saved", tiny_base, tmp_path / "x.gguf", type="q4_0", name="x")


@pytest.fixture(scope="module")
def gguf_lora_exports(tmp_path_factory, merged, sft_model):
    """The SFT model's base as GGUF beside its adapter: float32 both (the layout alone) and the
    demo's q4_1 base with a q8_0 adapter."""
    tmp = tmp_path_factory.mktemp("gguf_lora")
    out = {}
    for kind, adapter in (("f32", "f32"), ("q4_1", "q8_0")):
        params, _ = _params(tmp, formats=["gguf_lora"], gguf_lora={"type": kind, "embeddings": kind,
                                                                   "adapter_type": adapter, "tokenizer_pre": "gpt-2"})
        out[kind] = tmp / kind
        export.gguf_lora(params, sft_model[0], merged, out[kind])
    return out


def test_gguf_lora_in_float32_computes_what_the_merged_model_computes(gguf_lora_exports, sft_model, merged):
    from posttrain.stages import evaluate

    folder = gguf_lora_exports["f32"]
    assert sorted(p.name for p in folder.glob("*.gguf")) == ["adapter-f32.gguf", "model-f32.gguf"]
    metrics = json.loads((folder / "metrics.json").read_text())
    # the check's reference is the bf16 merge, which rounds what the float32 pair keeps
    assert metrics["top1_agreement"] >= 0.9
    assert metrics["size_mb"] == pytest.approx(metrics["base_size_mb"] + metrics["adapter_size_mb"], abs=2e-3)
    # the evaluation loads the pair as llama.cpp serves it: the adapter applied to the base
    info = evaluate._dequantized_copy(folder, folder.parent / "eval")
    assert info["file"] == "model-f32.gguf" and info["adapter"] == "adapter-f32.gguf"
    served = evaluate._load(info["folder"], None, "float32")
    source = evaluate._load(*resolve_model(sft_model[0])[:2], "float32")
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        torch.testing.assert_close(served(input_ids=ids).logits, source(input_ids=ids).logits, atol=1e-4, rtol=0)


def test_gguf_lora_export_is_smaller_describes_itself_and_generates(gguf_lora_exports, sft_model, merged):
    import gguf

    folder = gguf_lora_exports["q4_1"]
    metrics = json.loads((folder / "metrics.json").read_text())
    pairs = metrics["adapter_tensors"]["q8_0"]             # A in q8_0; B's rank-wide rows stay f16
    assert metrics["adapter_tensors"] == {"f16": pairs, "q8_0": pairs}
    assert metrics["size_ratio"] < json.loads((gguf_lora_exports["f32"] / "metrics.json").read_text())["size_ratio"] / 4
    assert metrics["top1_agreement"] >= 0.5
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(folder / "model-q4_1.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_1"
    assert (folder / "sample.txt").read_text().startswith(export.PROBE[0]["content"])
    card = (folder / "README.md").read_text()
    assert f"llama-server -m {folder}/model-q4_1.gguf --lora {folder}/adapter-q8_0.gguf" in card
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stage"] == "export-gguf-lora"
    assert manifest["inputs"]["model"]["path"] == str(sft_model[0])
    assert (folder / "tokenizer.json").is_file() and (folder / "generation_config.json").is_file()


def test_gguf_lora_needs_a_model_with_an_adapter(tmp_path, merged, tiny_base):
    params, _ = _params(tmp_path, formats=["gguf_lora"])
    with pytest.raises(ValueError, match="no LoRA adapter"):
        export.gguf_lora(params, tiny_base, merged, tmp_path / "pair")
    assert not (tmp_path / "pair").exists()


def test_the_dag_serves_the_adapter_beside_its_base_and_evaluates_the_pair(tmp_path):
    from posttrain import dag

    params, _ = _params(tmp_path, model="sft", formats=["gguf_lora"])
    table = {s.name: s for s in dag.stages(params)}
    pair = table["export_gguf_lora"]
    assert pair.outs == ["results/export/sft/gguf_lora"] and set(pair.deps) >= {"results/sft",
                                                                                 "results/export/sft/merged"}
    assert "results/export/sft/gguf_lora" in table["evaluate_sft_gguf_lora"].deps
    assert "gguf_lora=results/export/sft/gguf_lora" in table["export_check"].args
    params, _ = _params(tmp_path, model="base", formats=["gguf_lora"])
    with pytest.raises(ValueError, match="the base model has none"):
        dag.stages(params)


LLAMA_CPP = ROOT / "tests" / "llama_cpp"


def _llama_cpp(model, text: str, n: int, adapter=None) -> dict:
    """llama.cpp's own tokenization of `text` and greedy continuation (`make llama-cpp` installs
    its prebuilt CPU build)."""
    res = subprocess.run(["node", str(LLAMA_CPP / "greedy.mjs"), str(model), text, str(n),
                          *([str(adapter)] if adapter else [])], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert not out["warnings"], out["warnings"]
    return out


def _greedy(model, ids: list[int], n: int, stop: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=stop, pad_token_id=stop[0])
    tokens = out[0, len(ids):].tolist()
    return tokens[:-1] if tokens and tokens[-1] in stop else tokens   # llama.cpp stops before end of turn


def test_llama_cpp_serves_gguf_files_and_adapters_as_the_source_models_compute(gguf_exports, merged, tiny_base,
                                                                              tmp_path):
    # the real server's loader: vocabulary and pre-tokenizer, tensor names and layouts, the
    # rotary permutation, the adapter format and its scale
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.inference.generation import stop_ids

    tokenizer = AutoTokenizer.from_pretrained(merged)
    text = tokenizer.apply_chat_template(export.PROBE, add_generation_prompt=True, tokenize=False)
    stop = stop_ids(tokenizer)
    n = 12
    one_file = _llama_cpp(gguf_exports["f32"] / "model-f32.gguf", text, n)
    assert one_file["prompt"] == tokenizer(text).input_ids
    assert _llama_cpp(gguf_exports["f32"] / "model-f32.gguf", export.CHECK_TEXT, 1)["prompt"] == \
        tokenizer(export.CHECK_TEXT).input_ids
    served = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    assert one_file["tokens"] == _greedy(served, one_file["prompt"], n, stop)

    # a LoRA adapter as llama.cpp applies it (random A and B: the tiny fine-tune's greedy answers
    # are the base's); rsLoRA's scale goes through the file's one alpha
    from posttrain.export import gguf_adapter, gguf_export

    peft_model = _random_adapter(tiny_base, tmp_path / "adapter", use_rslora=True)
    gguf_export.write(tiny_base, tmp_path / "base.gguf", weights="f32", embeddings="f32", name="base",
                      tokenizer_pre="gpt-2")
    gguf_adapter.write(tmp_path / "adapter", tiny_base, tmp_path / "adapter.gguf", type="f32", name="adapter")
    with_adapter = _llama_cpp(tmp_path / "base.gguf", text, n, adapter=tmp_path / "adapter.gguf")
    without = _llama_cpp(tmp_path / "base.gguf", text, n)
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    want_adapted, want_base = (_greedy(m, with_adapter["prompt"], n, stop) for m in (peft_model, base))
    assert want_adapted != want_base                     # the adapter changes these answers
    assert with_adapter["tokens"] == want_adapted and without["tokens"] == want_base


def test_the_dag_quantizes_awq_in_the_export_environment_and_evaluates_it(tmp_path):
    from posttrain import dag

    params, _ = _params(tmp_path, model="sft", formats=["awq"])
    table = {s.name: s for s in dag.stages(params)}
    awq = table["export_awq"]
    assert awq.args[0] == "export-awq" and awq.env == dag.EXPORT_ENV and awq.outs == ["results/export/sft/awq"]
    assert table["evaluate_sft_awq"].env == dag.EXPORT_ENV
    assert "awq=results/export/sft/awq" in table["export_check"].args
    params, _ = _params(tmp_path, model="sft", formats=["gguf"])
    gguf = {s.name: s for s in dag.stages(params)}
    assert gguf["export_gguf"].env == gguf["evaluate_sft_gguf"].env == ""   # GGUF loads in the main environment


def test_llama_cpp_runs_a_qwen3_moe_gguf_as_transformers_does(tmp_path, tiny_base):
    # the production model's family: experts split out of transformers' fused gate_up tensor,
    # stacked per layer as llama.cpp's qwen3moe loader wants them, the router in float32
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.export import gguf_export
    from posttrain.inference.generation import stop_ids
    from posttrain.models.sources import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    moe = build_tiny_model("qwen3_moe", tokenizer, seed=3)
    moe.config.norm_topk_prob = True                     # as Qwen3-30B-A3B (llama.cpp assumes it)
    with torch.no_grad():                                # larger weights: the routing and the tokens vary
        for p in moe.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    moe.save_pretrained(tmp_path / "moe")
    tokenizer.save_pretrained(tmp_path / "moe")
    counts = gguf_export.write(tmp_path / "moe", tmp_path / "moe.gguf", weights="f32", embeddings="f32",
                               name="moe", tokenizer_pre="gpt-2")
    reader = gguf.GGUFReader(tmp_path / "moe.gguf")
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert shapes["blk.1.ffn_gate_exps.weight"] == shapes["blk.1.ffn_up_exps.weight"] == (64, 32, 4)
    assert shapes["blk.1.ffn_down_exps.weight"] == (32, 64, 4) and shapes["blk.1.ffn_gate_inp.weight"] == (64, 4)
    assert counts == {"f32": len(shapes)}

    served = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32)
    stop = stop_ids(tokenizer)
    text = tokenizer.apply_chat_template(export.PROBE, add_generation_prompt=True, tokenize=False)
    n = 12
    out = _llama_cpp(tmp_path / "moe.gguf", text, n)
    assert out["prompt"] == tokenizer(text).input_ids
    want = _greedy(served, out["prompt"], n, stop)
    assert len(set(want)) > 2 and out["tokens"] == want
    # the evaluation reads a GGUF export back through transformers: the same model again
    from posttrain.models.sources import load_gguf

    ids = torch.tensor([out["prompt"]])
    with torch.no_grad():
        assert torch.allclose(load_gguf(tmp_path / "moe.gguf").model(ids).logits, served(ids).logits, atol=1e-4)

    q8 = gguf_export.write(tmp_path / "moe", tmp_path / "moe-q8.gguf", weights="q8_0", embeddings="q8_0",
                           name="moe", tokenizer_pre="gpt-2")
    assert q8["q8_0"] >= 3 * 2 and q8["f32"] >= 2        # experts quantized; norms and routers kept
    assert len(_llama_cpp(tmp_path / "moe-q8.gguf", text, n)["tokens"]) > 0
