"""A PEFT LoRA adapter as a llama.cpp GGUF adapter (`llama-server -m base.gguf --lora
adapter.gguf`), and such an adapter read back onto a model.

Why it exists: a fine-tune whose LoRA changes are smaller than one step of a 4-bit grid is
rounded away when the merged weights are quantized (the demo's packaged base is itself Q4_1).
Served as a 4-bit base plus its adapter kept apart, the base costs 4-bit size and the adapter
keeps the fine-tune, which is how llama.cpp, Ollama and vLLM (`--enable-lora`) serve LoRAs.

The layout is what llama.cpp's `convert_lora_to_gguf.py` writes and its loader expects:
`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`; for each adapted weight
`<gguf name>.lora_a` (rank x input) and `<gguf name>.lora_b` (output x rank), the llama-arch
q/k rows permuted like the base's. llama.cpp scales by alpha / rank, one alpha for the file:
a module whose PEFT scaling differs (rsLoRA, rank or alpha patterns) has it folded into B.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

from posttrain.export import gguf_export

log = logging.getLogger(__name__)

PREFIX = "base_model.model."


def _peft_tensors(adapter_dir: Path) -> tuple[dict, dict]:
    """(adapter_config.json, {weight key: (A, B)}) of a LoRA adapter folder, refusing what a
    GGUF adapter cannot carry."""
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{adapter_dir}: a {config.get('peft_type')} adapter; GGUF adapters are LoRA")
    if config.get("use_dora"):
        raise ValueError(f"{adapter_dir}: DoRA adapters have no GGUF form; export the merged model (gguf) instead")
    pairs: dict[str, dict] = {}
    for key, array in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if key.endswith(marker):
                weight = key.removeprefix(PREFIX).removesuffix(marker) + ".weight"
                pairs.setdefault(weight, {})[part] = array.astype(np.float32)
                break
        else:
            raise ValueError(f"{adapter_dir}: tensor {key} is not a LoRA A/B matrix (trained embeddings or "
                             f"modules_to_save); a GGUF adapter carries only LoRA pairs: export the merged model")
    return config, {k: (v["lora_A"], v["lora_B"]) for k, v in sorted(pairs.items())}


def _scaling(config: dict, weight: str, rank: int) -> float:
    """PEFT's scale for one module: alpha / rank (alpha / sqrt(rank) with rsLoRA), with the
    per-module rank and alpha patterns."""
    module = weight.removesuffix(".weight")
    alpha = config["lora_alpha"]
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):    # PEFT's matching of pattern keys
            alpha = value
    return alpha / (rank ** 0.5 if config.get("use_rslora") else rank)


def write(adapter_dir: Path, base_config_dir: Path, path: Path, *, type: str, name: str) -> dict:
    """The LoRA adapter in `adapter_dir` (trained on the model whose config.json is in
    `base_config_dir`) as the GGUF adapter `path`, matrices in `type` (f32, f16 or q8_0; a matrix
    whose rows do not split into the type's blocks, as B's rank-wide rows, is written F16).
    Returns the tensor count per GGUF type."""
    import gguf
    from transformers import AutoConfig

    if type not in ("f32", "f16", "q8_0"):
        raise ValueError(f"GGUF adapter type {type!r}: llama.cpp adapters are f32, f16 or q8_0")
    config = AutoConfig.from_pretrained(base_config_dir)
    arch, permute = gguf_export.architecture(config)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    peft_config, pairs = _peft_tensors(adapter_dir)
    alpha = float(peft_config["lora_alpha"])

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name)
    counts: Counter = Counter()
    for weight, (a, b) in pairs.items():
        gguf_name = names.get_name(weight, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"{adapter_dir}: adapted weight {weight} has no GGUF name for {config.model_type}")
        rank = a.shape[0]
        b = b * (_scaling(peft_config, weight, rank) / (alpha / rank))  # exactly 1 for plain LoRA
        heads = gguf_export.rotary_heads(weight, config, permute)
        if heads:
            b = gguf_export.permute_rotary(b, heads)
        for suffix, array in (("lora_a", a), ("lora_b", b)):
            kind = gguf_export.tensor_type("", array, type, type)
            qtype = gguf_export.qtype_of(kind)
            writer.add_tensor(f"{gguf_name}.{suffix}", gguf.quants.quantize(np.ascontiguousarray(array), qtype),
                              raw_dtype=qtype)
            counts[kind] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    log.info("wrote %s: %d adapted weights, %s", path, len(pairs), dict(counts))
    return dict(sorted(counts.items()))


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of gguf_export.permute_rotary: llama.cpp's interleaved rotary rows back to Hugging Face's."""
    return (weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def read(path: Path) -> tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(alpha, {GGUF weight name: (A, B)}) of a GGUF LoRA adapter, dequantized to float32."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.get_field(gguf.Keys.General.TYPE)
    if field is None or field.contents() != "adapter":
        raise ValueError(f"{path} is not a GGUF adapter (general.type is not 'adapter')")
    alpha = float(reader.get_field(gguf.Keys.Adapter.LORA_ALPHA).contents())
    parts: dict[str, dict] = {}
    for tensor in reader.tensors:
        base, _, suffix = tensor.name.rpartition(".")
        shape = tuple(int(n) for n in reversed(tensor.shape))       # GGUF lists the row length first
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)
        parts.setdefault(base, {})[suffix] = array
    return alpha, {k: (v["lora_a"], v["lora_b"]) for k, v in sorted(parts.items())}


def apply(model, path: Path) -> int:
    """Add the GGUF adapter's alpha / rank x B @ A to the weights of `model` (a transformers
    model of the adapter's architecture, as llama.cpp applies it); returns how many weights
    changed."""
    import gguf
    import torch

    config = model.config
    arch, permute = gguf_export.architecture(config)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    by_gguf = {names.get_name(k, try_suffixes=(".weight",)): k for k in model.state_dict() if k.endswith(".weight")}
    alpha, pairs = read(path)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for gguf_name, (a, b) in pairs.items():
            key = by_gguf.get(gguf_name)
            if key is None:
                raise ValueError(f"{path}: adapter tensor {gguf_name} matches no weight of this "
                                 f"{config.model_type} model")
            heads = gguf_export.rotary_heads(key, config, permute)
            if heads:
                b = _unpermute(b, heads)
            delta = torch.from_numpy((alpha / a.shape[0]) * (b @ a))
            params[key].add_(delta.to(params[key].dtype))
    return len(pairs)
