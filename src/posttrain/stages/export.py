"""Export: serving artifacts for one model of the DAG, and what quantization costs.

    posttrain export-merge --model results/sft --out results/export/sft/merged
    .venv-export/bin/posttrain export-gptq --model results/export/sft/merged \\
        --calibration results/data/sft --out results/export/sft/gptq
    posttrain export-check --merged results/export/sft/merged --quantized gptq=results/export/sft/gptq \\
        --eval results/eval/sft --quantized-eval gptq=results/eval/sft_gptq --out results/export/sft/check

- export-merge: the LoRA adapters folded into the weights (a MoE's expert adapters included:
  PEFT merges every module it adapted), cast to `export.dtype`, saved as safetensors with the
  tokenizer, chat template, a sampling generation_config.json, a model card with the
  `vllm serve` line, and a check that the reloaded export computes the same logits.
- export-gptq: 4-bit GPTQ with GPTQModel, calibrated on SFT rows rendered with the chat template
  (what the served model will see). It runs from the export environment (.venv-export,
  envs/export.txt): GPTQModel's pins conflict with Snakemake's. The folder loads in transformers
  (with gptqmodel and optimum installed) and in vLLM unchanged.
- export-check: size ratios and the evaluation deltas of each quantized model against the
  unquantized one (the same eval suite, results/eval/), as a DVC metric.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from pathlib import Path

from posttrain.models import sources as models
from posttrain.training import trainers as training
from posttrain.config import ExportParams, Params, section
from posttrain.inference.generation import generate, stop_ids
from posttrain.core.manifest import read_manifest, require_manifest, write_json, write_manifest

log = logging.getLogger(__name__)

# What the reloaded export is checked on: a short chat the card's example also uses.
PROBE = [{"role": "user", "content": "What is 12 + 7? Answer briefly."}]


def _cfg(params: Params) -> ExportParams:
    if params.export is None:
        raise ValueError("export is null in these params: export is off")
    return params.export


weights_mb = models.weights_mb


def _staging(out: Path) -> Path:
    """Outputs are written beside `out` and moved into place at the end, so a failed export
    leaves no half-written model where a server would look for one."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


# --- merged weights ------------------------------------------------------------------------------


def merge(params: Params, model_dir: Path, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.stages.evaluate import resolve_model

    cfg = _cfg(params)
    weights, adapter, source = resolve_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter or weights)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    ids = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        reference = model(**ids).logits.float()

    tmp = _staging(out)
    model = model.to(models.DTYPES[cfg.dtype])
    model.generation_config = _generation_config(model.generation_config, tokenizer, cfg)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model

    # the export as a server loads it: the same logits, in the export's precision
    reloaded = AutoModelForCausalLM.from_pretrained(tmp)
    with torch.no_grad():
        logits = reloaded(**ids).logits.float()
    metrics = {"dtype": cfg.dtype, "parameters": models.count_parameters(reloaded),
               "size_mb": round(weights_mb(tmp), 3),
               "max_logit_diff": round(float((logits - reference).abs().max()), 6),
               "top1_agreement": round(float((logits.argmax(-1) == reference.argmax(-1)).float().mean()), 6)}
    if metrics["top1_agreement"] < 0.9:
        raise RuntimeError(f"{model_dir}: the merged {cfg.dtype} export predicts a different next token at "
                           f"{1 - metrics['top1_agreement']:.0%} of the probe's positions; the merge is wrong")
    write_json(tmp / "metrics.json", metrics)
    _write_card(tmp, out, cfg, title=f"{model_dir.name}, merged ({cfg.dtype})", tags=["merged", cfg.dtype],
                intro=f"`{model_dir}` with its adapters merged into the weights, for serving.",
                rows={"source": str(model_dir), "dtype": cfg.dtype, "parameters": metrics["parameters"],
                      "size (MB)": metrics["size_mb"], "max logit difference to the source": metrics["max_logit_diff"]})
    write_manifest(tmp, stage="export-merge", params=section(params, "export"), seed=cfg.seed,
                   inputs={"model": model_dir}, chat_template=tokenizer.chat_template,
                   extra={"metrics": metrics, "source_stage": source.get("stage")})
    _publish(tmp, out)
    log.info("merged export: %s", metrics)
    return metrics


def _generation_config(current, tokenizer, cfg: ExportParams):
    """Sampling defaults a server applies (vLLM reads generation_config.json), ending at the
    chat template's end-of-turn token as well as EOS."""
    from transformers import GenerationConfig

    gen = GenerationConfig.from_dict(current.to_dict()) if current is not None else GenerationConfig()
    gen.do_sample = cfg.temperature > 0
    gen.temperature = cfg.temperature if cfg.temperature > 0 else None
    gen.top_p = cfg.top_p if cfg.temperature > 0 else None
    gen.eos_token_id = stop_ids(tokenizer)
    gen.pad_token_id = tokenizer.pad_token_id
    return gen


def serve_command(folder: str | Path, cfg: ExportParams, quantized: str | None) -> str:
    """vLLM's command line for an export: `quantized` is its method (gptq, awq) or None."""
    parts = ["vllm", "serve", str(folder), "--max-model-len", str(cfg.max_model_len), "--generation-config", "auto"]
    if quantized:
        parts += ["--quantization", quantized]
    else:
        parts += ["--dtype", cfg.dtype]
    return " ".join(parts)


def _write_card(tmp: Path, folder: Path, cfg: ExportParams, *, title: str, tags: list[str], intro: str, rows: dict,
                quantized: str | None = None) -> None:
    """README.md in the staging folder `tmp` of the export that will live at `folder`."""
    needs = " (needs `gptqmodel` and `optimum` installed)" if quantized else ""
    usage = (f"## Serving\n\n```bash\n{serve_command(folder, cfg, quantized)}\n```\n\n"
             f"`generation_config.json` sets the sampling defaults (temperature {cfg.temperature}, top-p "
             f"{cfg.top_p}) and ends at the chat template's end of turn.\n\n"
             f"## transformers{needs}\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
             f"model = AutoModelForCausalLM.from_pretrained(\"{folder}\")\n"
             f"tokenizer = AutoTokenizer.from_pretrained(\"{folder}\")\n```\n")
    training.write_model_card(tmp, library="transformers", tags=tags, title=title, intro=intro, rows=rows,
                              usage=usage)


# --- 4-bit GPTQ and AWQ -----------------------------------------------------------------------------


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


def _layer_shapes(merged_dir: Path) -> dict[str, list[int]]:
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
    bad = sorted({f"{k.split('.')[-2]} ({shape[0]})" for k, shape in _layer_shapes(merged_dir).items()
                  if shape[0] % 64})
    if bad:
        raise ValueError(f"export.formats awq: {merged_dir} has layers whose output width is not a multiple of 64 "
                         f"({', '.join(bad)}), which GPTQModel's AWQ cannot quantize; use gptq")


def check_group_size(merged_dir: Path, group_size: int, setting: str = "export.gptq.group_size") -> None:
    """Refuse a group size that does not divide every quantized layer's input width, before the
    long calibration: the CPU kernel (and vLLM's) cannot run the result."""
    import math

    widths = {shape[1] for shape in _layer_shapes(merged_dir).values()}
    if group_size <= 0 or not widths:
        return
    bad = sorted(w for w in widths if w % group_size)
    if bad:
        common = math.gcd(*widths)
        fits = max(g for g in (32, 64, 128, 256) if common % g == 0) if common % 32 == 0 else -1
        raise ValueError(f"{setting} {group_size} does not divide the input width of {merged_dir}'s "
                         f"layers ({', '.join(map(str, bad))}); use {fits} (or -1: one group per row)")


def gptq(params: Params, merged_dir: Path, calibration_dir: Path, out: Path) -> dict:
    """4-bit GPTQ of the merged export (GPTQModel)."""
    return _quantize(params, "gptq", merged_dir, calibration_dir, out)


def awq(params: Params, merged_dir: Path, calibration_dir: Path, out: Path) -> dict:
    """4-bit AWQ of the merged export (GPTQModel's AWQ, GEMM layout, float16)."""
    return _quantize(params, "awq", merged_dir, calibration_dir, out)


def _quantize(params: Params, method: str, merged_dir: Path, calibration_dir: Path, out: Path) -> dict:
    """GPTQModel's calibrated 4-bit quantization of the merged export, saved as transformers,
    optimum and vLLM load it, reloaded and asked the probe."""
    cfg = _cfg(params)
    q = getattr(cfg, method)
    merged = require_manifest(merged_dir, "export-merge")
    require_manifest(calibration_dir, "prepare-data --kind sft")
    # GPTQModel packs one layer per CPU worker; it reads this at import
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, len(os.sched_getaffinity(0)))))
    try:
        from gptqmodel import GPTQModel, QuantizeConfig
        from gptqmodel.quantization import FORMAT, METHOD
    except ImportError as err:
        raise RuntimeError(f"export-{method} needs GPTQModel, which lives in the export environment (its pins "
                           "conflict with Snakemake's): run `make setup` and call .venv-export/bin/posttrain "
                           f"(the DAG's export_{method} rule does); import failed: {err}") from err
    import torch
    from transformers import AutoTokenizer

    check_group_size(merged_dir, q.group_size, f"export.{method}.group_size")
    if method == "awq":
        check_awq_widths(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    calibration = calibration_rows(tokenizer, calibration_dir, q.calibration_subsets, q.calibration_rows,
                                   q.calibration_max_length)
    tmp = _staging(out)
    # offloaded layers go inside the staging folder (removed before publishing), not to a random
    # temporary path that GPTQModel would then record in the exported config
    offload = {"offload_to_disk": True, "offload_to_disk_path": str(tmp / ".offload")} if q.offload_to_disk \
        else {"offload_to_disk": False}
    if method == "gptq":
        qconfig = QuantizeConfig(bits=q.bits, group_size=q.group_size, desc_act=q.desc_act, sym=q.sym,
                                 damp_percent=q.damp_percent, **offload)
        # On a CPU the calibration forwards run in float32: without bf16 matrix units (AVX512-BF16,
        # AMX) a bfloat16 product is emulated, 6.5-7.7x slower than float32 on the demo machine. The
        # weights that stay unquantized go back to the merged dtype before saving (_stored_as).
        load = {} if torch.cuda.is_available() else {"dtype": torch.float32}
        settings = {"bits": q.bits, "group_size": q.group_size, "desc_act": q.desc_act,
                    "calibration_dtype": str(load.get("dtype", "auto")).removeprefix("torch.")}
    else:
        # asymmetric (zero points), the GEMM layout vLLM's AWQ kernels read; float16, the dtype
        # they compute in (GPTQModel would pick bfloat16 on a CPU)
        qconfig = QuantizeConfig(bits=q.bits, group_size=q.group_size, quant_method=METHOD.AWQ, format=FORMAT.GEMM,
                                 sym=False, **offload)
        load = {"dtype": torch.float16}
        settings = {"bits": q.bits, "group_size": q.group_size, "dtype": "float16"}
    started = time.perf_counter()
    model = GPTQModel.load(str(merged_dir), qconfig, **load)
    model.quantize(calibration, batch_size=q.batch_size, tokenizer=tokenizer)
    if load.get("dtype") == torch.float32:
        _stored_as(model.model, getattr(torch, json.loads((merged_dir / "config.json").read_text()).get("dtype")
                                        or cfg.dtype))
    model.save(str(tmp))
    seconds = time.perf_counter() - started
    del model
    shutil.rmtree(tmp / ".offload", ignore_errors=True)
    # the merged export's tokenizer, chat template and sampling defaults, unchanged
    tokenizer.save_pretrained(tmp)
    shutil.copy(merged_dir / "generation_config.json", tmp / "generation_config.json")

    sample = _reload_and_generate(tmp, tokenizer)
    layer_losses = _layer_losses(tmp / "quant_log.csv")
    metrics = {**settings, "calibration_rows": len(calibration),
               "calibration_tokens": sum(len(r["input_ids"]) for r in calibration),
               "size_mb": round(weights_mb(tmp), 3), "merged_size_mb": round(weights_mb(merged_dir), 3),
               "size_ratio": round(weights_mb(tmp) / weights_mb(merged_dir), 4),
               "quantize_seconds": round(seconds, 1), **layer_losses}
    write_json(tmp / "metrics.json", metrics)
    (tmp / "sample.txt").write_text(f"{PROBE[0]['content']}\n---\n{sample}\n")
    name = method.upper()
    _write_card(tmp, out, cfg, title=f"{merged_dir.parent.name}, {q.bits}-bit {name}", tags=[method, f"{q.bits}bit"],
                intro=(f"The merged export `{merged_dir}` quantized with GPTQModel's {name} ({q.bits}-bit, group size "
                       f"{q.group_size}) on {len(calibration)} SFT rows; the embeddings stay in "
                       f"{settings.get('dtype') or merged['params'].get('dtype', 'the merged dtype')}."),
                rows={**{k.replace("_", " "): v for k, v in settings.items()},
                      "size (MB)": metrics["size_mb"], "of the merged size": metrics["size_ratio"],
                      "quantization time (s)": metrics["quantize_seconds"]},
                quantized=method)
    write_manifest(tmp, stage=f"export-{method}", params=section(params, "export"), seed=cfg.seed,
                   inputs={"merged": merged_dir, "calibration": calibration_dir},
                   chat_template=tokenizer.chat_template,
                   extra={"metrics": metrics, "parameters": merged.get("metrics", {}).get("parameters")})
    _publish(tmp, out)
    log.info("%s export: %s", method, metrics)
    return metrics


def _stored_as(model, dtype) -> None:
    """The model's float32 weights (embeddings, norms, an untied head: what quantization left
    alone) and its config in `dtype`; the packed 4-bit layers keep their own dtypes."""
    import torch

    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dtype == torch.float32:
            tensor.data = tensor.data.to(dtype)
    model.config.dtype = dtype


def _reload_and_generate(folder: Path, tokenizer) -> str:
    """The export loads in plain transformers (quantization_config in config.json), computes
    finite logits and answers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        finite = bool(torch.isfinite(model(**ids).logits).all())
    if not finite:
        raise RuntimeError(f"{folder}: the reloaded GPTQ export computes non-finite logits; try a larger "
                           f"export.gptq.damp_percent or more calibration rows")
    return generate(model, tokenizer, [PROBE], max_new_tokens=24)[0]


def _is_number(text: str | None) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _layer_losses(path: Path) -> dict:
    """GPTQ's per-module reconstruction loss (GPTQModel's quant_log.csv): a quick look at where
    quantization hurt, without an evaluation."""
    if not path.is_file():
        return {}
    with open(path) as fh:
        # AWQ logs "not applicable" for modules it scales through another (o_proj through v_proj)
        losses = [float(r["loss"]) for r in csv.DictReader(fh) if _is_number(r.get("loss"))]
    return {"quant_loss_mean": round(sum(losses) / len(losses), 8), "quant_loss_max": round(max(losses), 8)} \
        if losses else {}


# --- GGUF ----------------------------------------------------------------------------------------


def gguf(params: Params, merged_dir: Path, out: Path) -> dict:
    """One GGUF file of the merged export (posttrain.export.gguf_export), with the Hugging Face
    tokenizer beside it (vLLM's GGUF loader takes `--tokenizer`), checked by loading it back
    with transformers' GGUF reader: the same token ids as the source tokenizer, finite logits,
    and how often it predicts the merged model's next token."""
    from transformers import AutoTokenizer

    from posttrain.export import gguf_export

    cfg = _cfg(params)
    g = cfg.gguf
    embeddings = g.embeddings or g.type
    merged = require_manifest(merged_dir, "export-merge")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    tmp = _staging(out)
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
    _publish(tmp, out)
    log.info("gguf export: %s", metrics)
    return metrics


def gguf_lora(params: Params, model_dir: Path, merged_dir: Path, out: Path) -> dict:
    """The model's base as a 4-bit GGUF and its LoRA adapter as a llama.cpp GGUF adapter, served
    together (`llama-server -m <base> --lora <adapter>`). A fine-tune whose changes are smaller
    than a 4-bit step (the demo's, on a base that was 4-bit already) survives this where the
    quantized merge rounds it away. Checked like `gguf`: the base with the adapter applied as
    llama.cpp applies it must predict the merged export's next tokens."""
    from transformers import AutoTokenizer

    from posttrain.export import gguf_adapter
    from posttrain.export import gguf_export

    cfg = _cfg(params)
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
    tmp = _staging(out)
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
    _publish(tmp, out)
    log.info("gguf base + adapter export: %s", metrics)
    return metrics


def _gguf_metrics(tmp: Path, merged_dir: Path, fields: dict, agreement: float, sample: str, seconds: float) -> dict:
    """metrics.json (what was written, its size against the merged export's, the check's
    agreement) and sample.txt (the probe's answer) of a GGUF export."""
    size, merged_size = weights_mb(tmp), weights_mb(merged_dir)
    metrics = {**fields, "size_mb": round(size, 3), "merged_size_mb": round(merged_size, 3),
               "size_ratio": round(size / merged_size, 4), "top1_agreement": agreement,
               "write_seconds": round(seconds, 1)}
    write_json(tmp / "metrics.json", metrics)
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


def gguf_file_name(kind: str) -> str:
    return f"model-{kind}.gguf"


def gguf_serve_command(folder: Path | str, filename: str, cfg: ExportParams) -> str:
    return (f"vllm serve {Path(folder) / filename} --tokenizer {folder} --max-model-len {cfg.max_model_len} "
            f"--generation-config {folder}")


# --- quality cost ----------------------------------------------------------------------------------

# Evaluation metrics that describe the files rather than the model's quality.
NOT_COMPARED = {"parameters", "weights_mb"}


def check(merged_dir: Path, quantized: dict[str, Path], eval_dir: Path, quantized_evals: dict[str, Path],
          out: Path) -> dict:
    """Size ratio and metric deltas (quantized - unquantized) per format; perplexity also as a
    relative change, since its scale depends on the model."""
    require_manifest(merged_dir, "export-merge")
    reference = json.loads((eval_dir / "metrics.json").read_text())["metrics"]
    merged_mb = weights_mb(merged_dir)
    formats = {}
    for name, folder in sorted(quantized.items()):
        if name not in quantized_evals:
            raise ValueError(f"export-check: format {name!r} has no evaluation (--quantized-eval {name}=DIR)")
        require_manifest(folder, f"export-{name}")
        got = json.loads((quantized_evals[name] / "metrics.json").read_text())["metrics"]
        entry = {"size_mb": round(weights_mb(folder), 3), "size_ratio": round(weights_mb(folder) / merged_mb, 4)}
        for key in sorted(set(got) & set(reference) - NOT_COMPARED):
            if isinstance(got[key], (int, float)) and isinstance(reference[key], (int, float)):
                entry[key] = got[key]
                entry[f"{key}_delta"] = round(got[key] - reference[key], 6)
        if reference.get("perplexity") and got.get("perplexity"):
            entry["perplexity_change"] = round(got["perplexity"] / reference["perplexity"] - 1, 6)
        formats[name] = entry
    metrics = {"merged_size_mb": round(merged_mb, 3), "reference": read_manifest(eval_dir).get("stage"),
               **{f"{k}_{fmt}": v for fmt, entry in formats.items() for k, v in entry.items()}}
    tmp = _staging(out)
    write_json(tmp / "metrics.json", metrics)
    write_manifest(tmp, stage="export-check", params={}, seed=None,
                   inputs={"merged": merged_dir, "eval": eval_dir, **{f"export:{k}": v for k, v in quantized.items()},
                           **{f"eval:{k}": v for k, v in quantized_evals.items()}})
    _publish(tmp, out)
    log.info("export check: %s", metrics)
    return metrics
