"""`export:` serving artifacts: the merged model, then quantized formats."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from posttrain.config.base import Section
from posttrain.stats.directions import BETTER

GgufType = Literal["f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]


class CalibratedQuantParams(Section):
    """What GPTQModel's calibrated 4-bit quantizers (GPTQ, AWQ) share."""
    group_size: int = Field(128, ge=-1, description=(
        "Weights per scale/zero group: smaller groups cost size and keep more quality (-1: no groups, one scale "
        "per output channel)."))
    calibration_rows: int = Field(256, ge=1, description=(
        "Calibration rows: the SFT train rows (chat template applied)."))
    calibration_max_length: int = Field(256, ge=16, description="Calibration rows are cut to this many tokens.")
    calibration_subsets: list[str] | None = Field(None, min_length=1, description=(
        "Calibrate on the SFT train rows of these subsets only; null: all."))
    batch_size: int = Field(1, ge=1, description="Calibration rows run through the model at once.")
    offload_to_disk: bool = Field(False, description=(
        "GPTQModel parks quantized layers on disk while it works through the model: needed where the model does "
        "not fit in memory (a 30B MoE), slower otherwise."))


class GptqParams(CalibratedQuantParams):
    """4-bit GPTQ with GPTQModel: what vLLM, transformers and optimum load as `quant_method: gptq`."""
    bits: Literal[2, 3, 4, 8] = Field(4, description="Bits per weight.")
    desc_act: bool = Field(False, description="Act-order: better quality, slower kernels on some servers.")
    sym: bool = Field(True, description=(
        "Symmetric quantization (a fixed zero point); vLLM's Marlin GPTQ kernels need it."))
    damp_percent: float = Field(0.05, gt=0, lt=1, description=(
        "Dampening added to the Hessian's diagonal, as a share of its mean: higher is more stable, less exact."))


class AwqParams(CalibratedQuantParams):
    """4-bit AWQ (activation-aware scales, asymmetric, GEMM layout) with GPTQModel: what vLLM
    loads as `quant_method: awq` (its Marlin kernels on recent GPUs). Saved in float16, the
    dtype vLLM's AWQ kernels compute in."""
    bits: Literal[4] = Field(4, description="Bits per weight (AWQ kernels take 4 only).")


class GgufParams(Section):
    """A GGUF file (llama.cpp, Ollama, LM Studio, vLLM's GGUF loader) of the merged export;
    dense llama, mistral, qwen2 and qwen3 models."""
    type: GgufType = Field("q8_0", description=(
        "The type of the 2-D weights: f16, q8_0 (8.5 bits/weight, near lossless), q5_1, q5_0, q4_1 (5 bits: a "
        "scale and a minimum per 32 weights), q4_0 (4.5 bits)."))
    embeddings: GgufType | None = Field(None, description=(
        "The token embedding's (and an untied output head's) type: null keeps `type`."))
    tokenizer_pre: str | None = Field(None, description=(
        "llama.cpp's pre-tokenizer name (tokenizer.ggml.pre: llama-bpe, qwen2, smollm, ...); null lets llama.cpp "
        "use its default regex (it warns); transformers ignores it."))


class GgufLoraParams(GgufParams):
    """The exported model's base as a GGUF file and its LoRA adapter as a llama.cpp GGUF adapter,
    applied when the server loads them (`llama-server -m BASE --lora ADAPTER`): the fine-tune
    keeps full precision beside a 4-bit base, where quantizing the merged weights can round a
    small fine-tune away. Needs a model with a LoRA adapter (SFT, an RL stage)."""
    type: GgufType = Field("q4_1", description=(
        "The type of the base's 2-D weights (see export.gguf.type): the adapter keeps the fine-tune, so the base "
        "can be small."))
    adapter_type: Literal["f32", "f16", "q8_0"] = Field("q8_0", description=(
        "The adapter's A and B matrices: f32, f16 or q8_0 (what llama.cpp loads; B's rank-wide rows do not split "
        "into 32-weight blocks and stay f16)."))


class ExportParams(Section):
    """Serving artifacts for one model of the DAG: merged weights, then quantized formats."""
    model: str = Field("last", description=(
        "Which model: `last` (the last RL stage; sft, then base, without RL stages), sft, base, an RL stage's name, "
        "rl_zero, distilled or student_sft."))
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description=(
        "The merged (adapters folded in) model's dtype; the quantizers start from it."))
    formats: list[Literal["gptq", "awq", "gguf", "gguf_lora"]] = Field(default_factory=lambda: ["gptq"],
                                                                       description=(
        "The quantized formats to export, each a DAG stage (settings under the key of the same name)."))
    gptq: GptqParams = Field(default_factory=GptqParams, description="GPTQ settings (format gptq).")
    awq: AwqParams = Field(default_factory=AwqParams, description="AWQ settings (format awq).")
    gguf: GgufParams = Field(default_factory=GgufParams, description="GGUF settings (format gguf).")
    gguf_lora: GgufLoraParams = Field(default_factory=GgufLoraParams, description=(
        "GGUF base + adapter settings (format gguf_lora)."))
    max_model_len: int = Field(4096, ge=16, description=(
        "Context length written into the model card's `vllm serve` line (and llama-server's --ctx-size)."))
    temperature: float = Field(0.7, ge=0, description=(
        "Sampling temperature written into generation_config.json and the model card (0: greedy)."))
    top_p: float = Field(0.9, gt=0, le=1, description=(
        "Nucleus sampling threshold written into generation_config.json and the model card."))
    max_loss: dict[str, float] = Field(default_factory=dict, description=(
        "The release gate: the most each evaluation metric may lose from the unquantized model to a quantized "
        "export (a fall where higher is better, a rise where lower is better; perplexity as a relative change, "
        "0.1 = 10 %). export_check records pass or fail per format in its metrics and card, and the report marks "
        "an export that fails. Empty: no gate."))
    gate: Literal["record", "fail"] = Field("record", description=(
        "record: a failing export is recorded and reported; fail: export_check also fails (exits non-zero, naming "
        "the format and the metric), so nothing downstream of it runs."))
    seed: int = Field(0, description="Recorded in the export manifests.")

    @field_validator("max_loss")
    @classmethod
    def _gated_metrics(cls, max_loss: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(max_loss) - set(BETTER))
        if unknown:
            raise ValueError(f"no direction is known for {', '.join(unknown)}; gate one of {', '.join(BETTER)}")
        negative = sorted(k for k, v in max_loss.items() if v < 0)
        if negative:
            raise ValueError(f"{', '.join(negative)}: a loss limit is >= 0 (0: no loss at all)")
        return max_loss
