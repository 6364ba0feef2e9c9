"""GPTQ/AWQ calibration rows, and the layer-width checks that run before a long calibration."""

from __future__ import annotations

import json
from pathlib import Path


def calibration_rows(tokenizer, data_dir: Path, subsets: list[str] | None, n: int, max_length: int) -> list[dict]:
    """The first `n` SFT train rows (of `subsets` when set), rendered with the chat template
    and cut to `max_length` tokens, as GPTQModel's tokenized calibration examples."""
    rows = []
    with open(data_dir / "train.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            if subsets is not None and row.get("subset") not in subsets:
                continue
            ids = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]
            ids = list(ids[:max_length])
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
            if len(rows) == n:
                break
    if not rows:
        raise ValueError(f"export.gptq.calibration_subsets {subsets}: no rows of those subsets in "
                         f"{data_dir / 'train.jsonl'}")
    return rows


def layer_shapes(merged_dir: Path) -> dict[str, list[int]]:
    """The shapes of a merged export's decoder-layer projection weights, by tensor name."""
    from safetensors import safe_open

    shapes = {}
    for f in Path(merged_dir).glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for key in st.keys():
                shape = st.get_slice(key).get_shape()
                if ".layers." in key and key.endswith("proj.weight") and len(shape) == 2:
                    shapes[key] = shape
    return shapes


def check_awq_widths(merged_dir: Path) -> None:
    """GPTQModel's AWQ searches clipping bounds in blocks of 64 output rows: refuse, before the
    calibration, a model with a layer whose output width is not a multiple of 64."""
    bad = sorted({f"{k.split('.')[-2]} ({shape[0]})" for k, shape in layer_shapes(merged_dir).items()
                  if shape[0] % 64})
    if bad:
        raise ValueError(f"export.formats awq: {merged_dir} has layers whose output width is not a multiple of 64 "
                         f"({', '.join(bad)}), which GPTQModel's AWQ cannot quantize; use gptq")


def check_group_size(merged_dir: Path, group_size: int, setting: str = "export.gptq.group_size") -> None:
    """Refuse a group size that does not divide every quantized layer's input width, before the
    long calibration: the CPU kernel (and vLLM's) cannot run the result."""
    import math

    widths = {shape[1] for shape in layer_shapes(merged_dir).values()}
    if group_size <= 0 or not widths:
        return
    bad = sorted(w for w in widths if w % group_size)
    if bad:
        common = math.gcd(*widths)
        fits = max(g for g in (32, 64, 128, 256) if common % g == 0) if common % 32 == 0 else -1
        raise ValueError(f"{setting} {group_size} does not divide the input width of {merged_dir}'s "
                         f"layers ({', '.join(map(str, bad))}); use {fits} (or -1: one group per row)")
