"""export-gptq, export-awq: 4-bit weights with GPTQModel (run from .venv-export)."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from pathlib import Path

from posttrain.config import Params, section
from posttrain.core.manifest import require_manifest, write_manifest, write_metrics
from posttrain.core.publish import publish, staging
from posttrain.export.calibration import calibration_rows, check_awq_widths, check_group_size
from posttrain.export.cards import write_card
from posttrain.inference.generation import generate
from posttrain.models.sources import weights_mb
from posttrain.stages.export.common import PROBE, export_params

log = logging.getLogger(__name__)


def gptq(params: Params, merged_dir: Path, calibration_dir: Path, out: Path) -> dict:
    """4-bit GPTQ of the merged export (GPTQModel)."""
    return _quantize(params, "gptq", merged_dir, calibration_dir, out)


def awq(params: Params, merged_dir: Path, calibration_dir: Path, out: Path) -> dict:
    """4-bit AWQ of the merged export (GPTQModel's AWQ, GEMM layout, float16)."""
    return _quantize(params, "awq", merged_dir, calibration_dir, out)


def _quantize(params: Params, method: str, merged_dir: Path, calibration_dir: Path, out: Path) -> dict:
    """GPTQModel's calibrated 4-bit quantization of the merged export, saved as transformers,
    optimum and vLLM load it, reloaded and asked the probe."""
    cfg = export_params(params)
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
    tmp = staging(out)
    # offloaded layers go inside the staging folder (removed before publishing), not to a random
    # temporary path that GPTQModel would then record in the exported config
    offload = {"offload_to_disk": True, "offload_to_disk_path": str(tmp / ".offload")} if q.offload_to_disk \
        else {"offload_to_disk": False}
    if method == "gptq":
        qconfig = QuantizeConfig(bits=q.bits, group_size=q.group_size, desc_act=q.desc_act, sym=q.sym,
                                 damp_percent=q.damp_percent, **offload)
        # On a CPU the calibration forwards run in float32: without bf16 matrix units (AVX512-BF16,
        # AMX) a bfloat16 product is emulated, several times slower than float32 (measured by
        # benchmarks/gptq_calibration.py; figures in benchmarks/RESULTS.md, "GPTQ calibration"). The
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
    metrics = write_metrics(tmp, metrics)
    (tmp / "sample.txt").write_text(f"{PROBE[0]['content']}\n---\n{sample}\n")
    name = method.upper()
    write_card(tmp, out, cfg, title=f"{merged_dir.parent.name}, {q.bits}-bit {name}", tags=[method, f"{q.bits}bit"],
                intro=(f"The merged export `{merged_dir}` quantized with GPTQModel's {name} ({q.bits}-bit, group size "
                       f"{q.group_size}) on {len(calibration)} SFT rows; the embeddings stay in "
                       f"{settings.get('dtype') or merged['params'].get('dtype', 'the merged dtype')}."),
                rows={**{k.replace("_", " "): v for k, v in settings.items()},
                      "size (MB)": metrics["size_mb"], "of the merged size": metrics["size_ratio"]},
                quantized=method)
    write_manifest(tmp, stage=f"export-{method}", params=section(params, "export"), seed=cfg.seed,
                   inputs={"merged": merged_dir, "calibration": calibration_dir},
                   chat_template=tokenizer.chat_template,
                   extra={"metrics": metrics, "parameters": merged.get("metrics", {}).get("parameters")})
    publish(tmp, out)
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
