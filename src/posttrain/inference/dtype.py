"""The dtype a model answers in (evaluation, the teacher's samples) when nothing trains it.

`auto` is the stored dtype on a GPU. On a CPU it is bfloat16 where the CPU multiplies bfloat16
natively (AVX512-BF16 or AMX: recent Xeon and EPYC), float32 elsewhere: there bfloat16 is
emulated and slower than float32. On the demo's 2-core EPYC (AVX512-BF16) greedy decoding of
SmolLM2-135M on one core runs 2.9x faster in bfloat16 (`benchmarks/inference_dtype.py`); the
answers are those of a bfloat16 model, so compare figures measured in the same dtype (each
evaluation records the one it used).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

CHOICES = ("auto", "float32", "bfloat16")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve(setting: str) -> str:
    """The dtype name for `setting` on this machine: `auto` (GPU: the stored dtype), `float32`
    or `bfloat16`."""
    if setting not in CHOICES:
        raise ValueError(f"dtype {setting!r}: choose one of {', '.join(CHOICES)}")
    if setting != "auto":
        if setting == "bfloat16" and not torch.cuda.is_available() and not cpu_has_bf16():
            log.warning("bfloat16 on a CPU without bfloat16 instructions is emulated: slower than float32")
        return setting
    if torch.cuda.is_available():
        return "auto"
    return "bfloat16" if cpu_has_bf16() else "float32"


def torch_dtype(name: str, default="auto"):
    """What `from_pretrained(dtype=...)` takes for a resolved name; `default` for `auto` (the
    stored dtype; None for `weights_in`)."""
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(name, default)


@contextmanager
def weights_in(model, dtype):
    """The model's floating-point parameters replaced by `dtype` copies for the duration, the
    originals put back untouched afterwards (a cast there and back would round float32 weights
    for good). For sampling from a model that trains in float32 on a CPU: bfloat16 decoding is
    ~3x faster there. None leaves the model as it is."""
    swapped = []
    if dtype is not None:
        for param in model.parameters():
            if param.is_floating_point() and param.dtype != dtype:
                swapped.append((param, param.data))
                param.data = param.data.to(dtype)
    try:
        yield model
    finally:
        for param, data in swapped:
            param.data = data
