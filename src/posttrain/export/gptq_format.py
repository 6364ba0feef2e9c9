"""Reading a GPTQ or AWQ checkpoint's weights back into plain floating-point tensors.

The evaluation measures what 4-bit weights cost in quality. On a CPU, GPTQModel's int4 kernels
decode batched prompts dozens of times slower than a dense model, so the suite runs on the
dequantized weights instead: the same numbers the kernels multiply by, in float32 (fake
quantization, the usual way to measure a quantizer's error). The format is the one GPTQModel,
transformers/optimum and vLLM share (`checkpoint_format: gptq`):

- `qweight` int32 [in * bits / 32, out]: `32 / bits` codes per element along the input dim;
- `qzeros` int32 [groups, out * bits / 32]: zero points, packed the same way along the output
  dim, stored minus one (the format's historical offset);
- `scales` float16 [groups, out]; `g_idx` int32 [in]: each input row's group.

AWQ's GEMM format (`quant_method: awq`, what vLLM's AWQ kernels and GPTQModel's write) packs the
other way: `qweight` int32 [in, out * bits / 32] and `qzeros` [groups, out * bits / 32], both along
the output dim with eight columns per int32 in the interleaved order 0 2 4 6 1 3 5 7, zero points
stored as they are; `scales` [groups, out]; groups are consecutive input rows (no g_idx).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

WEIGHT_PARTS = ("qweight", "qzeros", "scales", "g_idx")


def quantization_config(folder: Path) -> dict | None:
    config = json.loads((Path(folder) / "config.json").read_text())
    q = config.get("quantization_config")
    return q if q and q.get("quant_method") in ("gptq", "awq") else None


def _unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Codes of `bits` bits, packed little-end first into int32 along `dim`, as int64."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    wide = packed.to(torch.int64) & 0xFFFFFFFF                 # int32 -> unsigned
    if dim == 0:
        codes = (wide.unsqueeze(1) >> shifts.view(1, per, 1)) & (2**bits - 1)
        return codes.reshape(-1, packed.shape[1])
    codes = (wide.unsqueeze(2) >> shifts.view(1, 1, per)) & (2**bits - 1)
    return codes.reshape(packed.shape[0], -1)


def dequantize_linear(qweight, qzeros, scales, g_idx, bits: int, v1_zero_offset: bool = True) -> torch.Tensor:
    """The float32 weight [out, in] of one GPTQ linear layer."""
    if bits not in (2, 4, 8):
        raise ValueError(f"GPTQ {bits}-bit weights are not supported here (2, 4 or 8)")
    codes = _unpack(qweight, bits, 0)                          # [in, out]
    zeros = _unpack(qzeros, bits, 1)[:, : scales.shape[1]]     # [groups, out]
    if v1_zero_offset:
        zeros = zeros + 1
    groups = g_idx.to(torch.int64)
    weight = scales.float()[groups] * (codes - zeros[groups]).float()
    return weight.t().contiguous()


# AWQ's packing order: nibble j of an int32 holds column AWQ_ORDER[j] of its eight; column c sits in
# nibble AWQ_NIBBLE[c].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_NIBBLE = tuple(AWQ_ORDER.index(c) for c in range(8))


def _unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    codes = _unpack(packed, 4, 1)                             # [rows, out] in nibble order
    return codes.view(codes.shape[0], -1, 8)[:, :, list(AWQ_NIBBLE)].reshape(codes.shape)


def dequantize_awq_linear(qweight, qzeros, scales, group_size: int) -> torch.Tensor:
    """The float32 weight [out, in] of one 4-bit AWQ (GEMM) linear layer."""
    codes, zeros = _unpack_awq(qweight), _unpack_awq(qzeros)   # [in, out], [groups, out]
    groups = torch.arange(codes.shape[0]) // group_size
    weight = scales.float()[groups] * (codes - zeros[groups]).float()
    return weight.t().contiguous()


def dequantize_folder(src: Path, dst: Path) -> Path:
    """A float32 copy of the GPTQ or AWQ model folder `src` at `dst` that any transformers
    install loads."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    q = quantization_config(src)
    if q is None:
        raise ValueError(f"{src}: config.json has no GPTQ or AWQ quantization_config")
    awq = q["quant_method"] == "awq"
    if awq and (q["bits"] != 4 or q.get("version", q.get("format", "gemm")) != "gemm"):
        raise ValueError(f"{src}: AWQ {q['bits']}-bit {q.get('version')} weights are not supported here (4-bit gemm)")
    v1 = q.get("checkpoint_format", q.get("format", "gptq")) == "gptq"
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(src).glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            for key in st.keys():
                tensors[key] = st.get_tensor(key)
    out: dict[str, torch.Tensor] = {}
    for key in list(tensors):
        prefix, _, part = key.rpartition(".")
        if part == "qweight" and awq:
            out[f"{prefix}.weight"] = dequantize_awq_linear(tensors[key], tensors[f"{prefix}.qzeros"],
                                                            tensors[f"{prefix}.scales"], q["group_size"])
        elif part == "qweight":
            parts = [tensors[f"{prefix}.{p}"] for p in WEIGHT_PARTS]
            out[f"{prefix}.weight"] = dequantize_linear(*parts, bits=q["bits"], v1_zero_offset=v1)
        elif part in WEIGHT_PARTS:
            continue
        else:
            out[key] = tensors[key].float() if tensors[key].is_floating_point() else tensors[key]
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((Path(src) / "config.json").read_text())
    config.pop("quantization_config")
    config["dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for f in Path(src).iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "quantize_config.json"):
            shutil.copy(f, dst / f.name)
    return dst
