"""Base model stage: resolve `model.base` to a local Hugging Face folder.

    posttrain base-model --out results/base [--params params.yaml ...]

Whatever the source (packaged GGUF, hub id + revision, local folder, GGUF file, tiny random
model), the result is the same: safetensors weights, the tokenizer, the chat template every later
stage uses, a model card and manifest.json (written last).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from posttrain.config import Params, section
from posttrain.core.commands import params_arg
from posttrain.core.manifest import write_manifest
from posttrain.models import chat
from posttrain.models import sources as models

log = logging.getLogger(__name__)


def main(params: Params, out: Path) -> dict:
    cfg = params.model
    # 1. Resolve and load.
    log.info("resolving model.base = %s", cfg.base)
    resolved = models.resolve(cfg.base, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                              seed=cfg.seed)
    model, tokenizer = resolved.model, resolved.tokenizer

    # 2. Chat template: the model's own, or the configured one when it has none or we want
    #    generation markers for assistant-only loss.
    template = chat.resolve_template(cfg.chat_template, getattr(tokenizer, "chat_template", None))
    if "<|im_start|>" in template:
        missing = [t for t in chat.CHATML_TOKENS
                   if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
        if missing:
            # New tokens would need trained embeddings; a base model without them should use a
            # template written in its own tokens (a .jinja path).
            raise ValueError(f"the chat template uses {missing}, which {cfg.base} does not have as tokens")
    tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # 3. Save. A stale folder from an earlier run is replaced whole, never mixed.
    dtype = cfg.dtype
    if dtype == "auto" and resolved.source.get("kind") in ("embedded", "gguf"):
        dtype = "float32"
    model = models.cast_dtype(model, dtype)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_params = models.count_parameters(model)
    _write_model_card(out, cfg.base, resolved.source, n_params, template)

    return write_manifest(
        out, stage="base-model", params=section(params, "model"), seed=cfg.seed,
        inputs=resolved.inputs, chat_template=template,
        extra={"source": resolved.source, "architecture": model.config.model_type,
               "parameters": n_params, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
               "generation_markers": chat.has_generation_markers(template)},
    )


def _write_model_card(out: Path, base: str, source: dict, n_params: int, template: str) -> None:
    card = f"""---
library_name: transformers
tags: [posttrain, base]
---
# Base model: {base}

Resolved by `posttrain base-model` from {source.get('kind')} source \
`{source.get('id') or source.get('path') or source.get('name') or source.get('arch')}`.

- parameters: {n_params:,}
- chat template sha256: `{chat.template_hash(template)}`
- assistant spans marked for assistant-only loss: {chat.has_generation_markers(template)}

See `manifest.json` for the exact parameters, inputs and library versions.
"""
    (out / "README.md").write_text(card)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("base-model", help="resolve model.base to a local HF folder")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: main(params, a.out))
