"""export-merge: the model's adapters folded into its weights, for serving."""

from __future__ import annotations

import logging
from pathlib import Path

from posttrain.config import ExportParams, Params, section
from posttrain.core.manifest import write_json, write_manifest
from posttrain.core.publish import publish, staging
from posttrain.export.cards import write_card
from posttrain.inference.generation import stop_ids
from posttrain.models import sources as models
from posttrain.models.sources import weights_mb
from posttrain.stages.export.common import PROBE, export_params

log = logging.getLogger(__name__)


def merge(params: Params, model_dir: Path, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.models.artifacts import resolve_model

    cfg = export_params(params)
    weights, adapter, source = resolve_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter or weights)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    ids = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        reference = model(**ids).logits.float()

    tmp = staging(out)
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
    write_card(tmp, out, cfg, title=f"{model_dir.name}, merged ({cfg.dtype})", tags=["merged", cfg.dtype],
                intro=f"`{model_dir}` with its adapters merged into the weights, for serving.",
                rows={"source": str(model_dir), "dtype": cfg.dtype, "parameters": metrics["parameters"],
                      "size (MB)": metrics["size_mb"], "max logit difference to the source": metrics["max_logit_diff"]})
    write_manifest(tmp, stage="export-merge", params=section(params, "export"), seed=cfg.seed,
                   inputs={"model": model_dir}, chat_template=tokenizer.chat_template,
                   extra={"metrics": metrics, "source_stage": source.get("stage")})
    publish(tmp, out)
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
