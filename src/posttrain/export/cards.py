"""Model cards and serving command lines of exports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from posttrain.training import trainers as training

if TYPE_CHECKING:
    from posttrain.config import ExportParams


def serve_command(folder: str | Path, cfg: ExportParams, quantized: str | None) -> str:
    """vLLM's command line for an export: `quantized` is its method (gptq, awq) or None."""
    parts = ["vllm", "serve", str(folder), "--max-model-len", str(cfg.max_model_len), "--generation-config", "auto"]
    if quantized:
        parts += ["--quantization", quantized]
    else:
        parts += ["--dtype", cfg.dtype]
    return " ".join(parts)


def write_card(tmp: Path, folder: Path, cfg: ExportParams, *, title: str, tags: list[str], intro: str, rows: dict,
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


def gguf_file_name(kind: str) -> str:
    return f"model-{kind}.gguf"


def gguf_serve_command(folder: Path | str, filename: str, cfg: ExportParams) -> str:
    return (f"vllm serve {Path(folder) / filename} --tokenizer {folder} --max-model-len {cfg.max_model_len} "
            f"--generation-config {folder}")
