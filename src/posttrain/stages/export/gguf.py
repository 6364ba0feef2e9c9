"""export-gguf, export-gguf-lora: GGUF files for llama.cpp, Ollama and vLLM."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from posttrain.config import Params, section
from posttrain.core.manifest import require_manifest, write_manifest, write_metrics
from posttrain.core.publish import publish, staging
from posttrain.export.cards import gguf_file_name, gguf_serve_command
from posttrain.inference.generation import generate
from posttrain.models.sources import weights_mb
from posttrain.stages.export.common import PROBE, export_params
from posttrain.training import trainers as training

log = logging.getLogger(__name__)


def gguf(params: Params, merged_dir: Path, out: Path) -> dict:
    """One GGUF file of the merged export (posttrain.export.gguf_export), with the Hugging Face
    tokenizer beside it (vLLM's GGUF loader takes `--tokenizer`), checked by loading it back
    with transformers' GGUF reader: the same token ids as the source tokenizer, finite logits,
    and how often it predicts the merged model's next token."""
    from transformers import AutoTokenizer

    from posttrain.export import gguf_export

    cfg = export_params(params)
    g = cfg.gguf
    embeddings = g.embeddings or g.type
    merged = require_manifest(merged_dir, "export-merge")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    tmp = staging(out)
    filename = gguf_file_name(g.type)
    started = time.perf_counter()
    counts = gguf_export.write(merged_dir, tmp / filename, weights=g.type, embeddings=embeddings,
                               name=merged_dir.parent.name, tokenizer_pre=g.tokenizer_pre)
    seconds = time.perf_counter() - started
    agreement, sample = _check_gguf(tmp, filename, None, merged_dir, tokenizer)
    metrics = _gguf_metrics(tmp, merged_dir, {"type": g.type, "embeddings": embeddings, "tensors": counts},
                            agreement, sample, seconds)
    usage = (f"## Serving\n\n```bash\nllama-server -m {out / filename} --ctx-size {cfg.max_model_len}\n"
             f"{gguf_serve_command(out, filename, cfg)}\n```\n\n"
             f"## transformers (dequantizes to float32)\n\n```python\n"
             f"from transformers import AutoModelForCausalLM, AutoTokenizer\n"
             f"model = AutoModelForCausalLM.from_pretrained(\"{out}\", gguf_file=\"{filename}\")\n"
             f"tokenizer = AutoTokenizer.from_pretrained(\"{out}\")\n```\n")
    training.write_model_card(
        tmp, library="gguf", tags=["gguf", g.type], title=f"{merged_dir.parent.name}, GGUF {g.type}",
        intro=(f"The merged export `{merged_dir}` as one GGUF file: {g.type} weights, {embeddings} token "
               f"embeddings, float32 norms." + _no_pre_tokenizer_note(g.tokenizer_pre, "export.gguf.tokenizer_pre")),
        rows={"file": filename, "weights": g.type, "embeddings": embeddings, "size (MB)": metrics["size_mb"],
              "of the merged size": metrics["size_ratio"],
              "next-token agreement with the merged model": metrics["top1_agreement"]},
        usage=usage)
    write_manifest(tmp, stage="export-gguf", params=section(params, "export"), seed=cfg.seed,
                   inputs={"merged": merged_dir}, chat_template=tokenizer.chat_template,
                   extra={"metrics": metrics, "parameters": merged.get("metrics", {}).get("parameters")})
    publish(tmp, out)
    log.info("gguf export: %s", metrics)
    return metrics


def gguf_lora(params: Params, model_dir: Path, merged_dir: Path, out: Path) -> dict:
    """The model's base as a 4-bit GGUF and its LoRA adapter as a llama.cpp GGUF adapter, served
    together (`llama-server -m <base> --lora <adapter>`). A fine-tune whose changes are smaller
    than a 4-bit step (the demo's, on a base that was 4-bit already) survives this where the
    quantized merge rounds it away. Checked like `gguf`: the base with the adapter applied as
    llama.cpp applies it must predict the merged export's next tokens."""
    from transformers import AutoTokenizer

    from posttrain.export import gguf_adapter, gguf_export

    cfg = export_params(params)
    g = cfg.gguf_lora
    embeddings = g.embeddings or g.type
    merged = require_manifest(merged_dir, "export-merge")
    require_manifest(model_dir, "a training stage")
    adapter_dir = model_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"export.formats gguf_lora: {model_dir} has no LoRA adapter (adapter/): a full fine-tune "
                         f"or a base model has nothing to serve beside a base; export it with gguf instead")
    base_dir = Path(json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"])
    if not (base_dir / "config.json").is_file():
        raise ValueError(f"export.formats gguf_lora: the adapter's base model {base_dir} (adapter_config.json's "
                         f"base_model_name_or_path) is not a model folder here; rerun the stage that made it")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    tmp = staging(out)
    base_file, adapter_file = gguf_file_name(g.type), f"adapter-{g.adapter_type}.gguf"
    started = time.perf_counter()
    counts = gguf_export.write(base_dir, tmp / base_file, weights=g.type, embeddings=embeddings, name=base_dir.name,
                               tokenizer_pre=g.tokenizer_pre, chat_template=tokenizer.chat_template)
    adapter_counts = gguf_adapter.write(adapter_dir, base_dir, tmp / adapter_file, type=g.adapter_type,
                                        name=model_dir.name)
    seconds = time.perf_counter() - started
    agreement, sample = _check_gguf(tmp, base_file, tmp / adapter_file, merged_dir, tokenizer)
    metrics = _gguf_metrics(tmp, merged_dir, {
        "type": g.type, "embeddings": embeddings, "adapter_type": g.adapter_type, "tensors": counts,
        "adapter_tensors": adapter_counts, "base_size_mb": round(weights_mb(tmp, "model-*.gguf"), 3),
        "adapter_size_mb": round(weights_mb(tmp, "adapter-*.gguf"), 3)}, agreement, sample, seconds)
    usage = (f"## Serving\n\n```bash\nllama-server -m {out / base_file} --lora {out / adapter_file} "
             f"--ctx-size {cfg.max_model_len}\n```\n\n"
             f"Ollama: `FROM ./{base_file}` and `ADAPTER ./{adapter_file}` in a Modelfile in this folder. "
             f"vLLM serves this model's merged or GPTQ export instead.\n\n"
             f"## transformers (dequantizes to float32)\n\n```python\n"
             f"from transformers import AutoModelForCausalLM\nfrom peft import PeftModel\n"
             f"base = AutoModelForCausalLM.from_pretrained(\"{out}\", gguf_file=\"{base_file}\")\n"
             f"model = PeftModel.from_pretrained(base, \"{adapter_dir}\")   # the adapter in PEFT's form\n```\n")
    training.write_model_card(
        tmp, library="gguf", tags=["gguf", g.type, "lora"],
        title=f"{model_dir.name}, GGUF {g.type} base + LoRA adapter",
        intro=(f"`{base_dir}` as a GGUF file ({g.type} weights, {embeddings} token embeddings) and the LoRA "
               f"adapter of `{model_dir}` as a llama.cpp adapter ({g.adapter_type}), applied at load time."
               + _no_pre_tokenizer_note(g.tokenizer_pre, "export.gguf_lora.tokenizer_pre")),
        rows={"base file": base_file, "adapter file": adapter_file, "size (MB)": metrics["size_mb"],
              "of the merged size": metrics["size_ratio"],
              "next-token agreement with the merged model": metrics["top1_agreement"]},
        usage=usage)
    write_manifest(tmp, stage="export-gguf-lora", params=section(params, "export"), seed=cfg.seed,
                   inputs={"model": model_dir, "base": base_dir, "merged": merged_dir},
                   chat_template=tokenizer.chat_template,
                   extra={"metrics": metrics, "parameters": merged.get("metrics", {}).get("parameters")})
    publish(tmp, out)
    log.info("gguf base + adapter export: %s", metrics)
    return metrics


def _gguf_metrics(tmp: Path, merged_dir: Path, fields: dict, agreement: float, sample: str, seconds: float) -> dict:
    """metrics.json (what was written, its size against the merged export's, the check's
    agreement) and sample.txt (the probe's answer) of a GGUF export."""
    size, merged_size = weights_mb(tmp), weights_mb(merged_dir)
    metrics = {**fields, "size_mb": round(size, 3), "merged_size_mb": round(merged_size, 3),
               "size_ratio": round(size / merged_size, 4), "top1_agreement": agreement,
               "write_seconds": round(seconds, 1)}
    metrics = write_metrics(tmp, metrics)
    (tmp / "sample.txt").write_text(f"{PROBE[0]['content']}\n---\n{sample}\n")
    return metrics


def _no_pre_tokenizer_note(tokenizer_pre: str | None, setting: str) -> str:
    return "" if tokenizer_pre else (f" No `tokenizer.ggml.pre` was set ({setting}): llama.cpp pre-tokenizes with "
                                     "its default regex and warns.")


def _check_gguf(tmp: Path, filename: str, adapter: Path | None, merged_dir: Path, tokenizer) -> tuple[float, str]:
    """Reload a GGUF export (and apply its adapter) with transformers' GGUF reader, the Hugging
    Face tokenizer and sampling defaults beside it: its tokenizer must split text as the source's,
    its logits must be finite. Returns how often it predicts the merged model's next token, and
    its answer to the probe."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.export import gguf_adapter

    tokenizer.save_pretrained(tmp)
    shutil.copy(merged_dir / "generation_config.json", tmp / "generation_config.json")
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=filename)
    probe_text = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, tokenize=False)
    for text in (probe_text, CHECK_TEXT):
        if reloaded_tokenizer(text).input_ids != tokenizer(text).input_ids:
            raise RuntimeError(f"{tmp / filename}: the GGUF tokenizer splits {text!r} differently from {merged_dir}'s")
    source = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=filename, dtype=torch.float32)
    if adapter is not None:
        gguf_adapter.apply(model, adapter)
    ids = tokenizer([probe_text + CHECK_TEXT], return_tensors="pt")
    with torch.no_grad():
        reference, logits = source(**ids).logits, model(**ids).logits
    del source
    if not bool(torch.isfinite(logits).all()):
        raise RuntimeError(f"{tmp / filename}: the reloaded GGUF computes non-finite logits")
    sample = generate(model, tokenizer, [PROBE], max_new_tokens=24)[0]
    agreement = round(float((logits.argmax(-1) == reference.argmax(-1)).float().mean()), 6)
    return agreement, sample


# A second text the GGUF tokenizer must split exactly as the source's: digits, punctuation,
# spaces and non-ASCII, where byte-level BPE pre-tokenizers differ.
CHECK_TEXT = "Tom has 1,234 apples;  he buys 56 more — how many now?  Ça fait 1290.\n"
