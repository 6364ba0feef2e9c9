"""Writing a merged Hugging Face causal LM as one GGUF file: what llama.cpp, Ollama, LM Studio
and vLLM's GGUF loader serve.

Llama-family models (llama, mistral, qwen2, qwen3: one tensor per Hugging Face tensor) and
Qwen3-MoE (qwen3_moe: Qwen3-30B-A3B's family). Transformers keeps a MoE layer's experts as two
stacked tensors, gate and up fused in one (`experts.gate_up_proj`, experts x 2*ffn x hidden) and
`experts.down_proj`; GGUF wants three (`ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps`, experts
first), so the fused one is split, and the router (`ffn_gate_inp`) stays float32 as llama.cpp's
converter keeps it. `write` refuses other architectures and says so.

Layouts follow llama.cpp's converter, which is what its loader expects:
- llama-arch attention q/k rows are permuted into the interleaved rotary order llama.cpp uses
  (transformers' GGUF loader undoes it, which the export check exercises);
- 1-D tensors (norms, biases) stay float32; the token embedding (and an untied output head)
  get their own type (`embeddings`), since a tied 135M model spends a fifth of its weights there
  and they are the most sensitive to rounding;
- a tensor whose rows do not split into the type's 32-weight blocks is written as F16.
The tokenizer is written as GGUF's `gpt2` (byte-level BPE) vocabulary with its merges, special
token ids and chat template; SentencePiece-style tokenizers are refused.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TYPES = ("f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
# Hugging Face model_type -> (GGUF architecture, whether q/k rows are permuted for llama.cpp's rope)
ARCHITECTURES = {"llama": ("LLAMA", True), "mistral": ("LLAMA", True), "qwen2": ("QWEN2", False),
                 "qwen3": ("QWEN3", False), "qwen3_moe": ("QWEN3MOE", False)}


def qtype_of(name: str):
    from gguf import GGMLQuantizationType

    if name not in TYPES:
        raise ValueError(f"GGUF type {name!r} is not one of {', '.join(TYPES)}")
    return GGMLQuantizationType[name.upper()]


def file_type(name: str) -> int:
    from gguf import LlamaFileType

    special = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16}
    return special[name] if name in special else LlamaFileType[f"MOSTLY_{name.upper()}"]


def architecture(config) -> tuple:
    from gguf import MODEL_ARCH

    model_type = config.model_type
    if model_type not in ARCHITECTURES:
        raise ValueError(f"GGUF export writes {', '.join(sorted(ARCHITECTURES))} models; this one is {model_type!r}. "
                         f"Convert the merged export with llama.cpp's convert_hf_to_gguf.py instead, or drop gguf "
                         f"from export.formats")
    rope = getattr(config, "rope_scaling", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", None):
        raise ValueError(f"GGUF export: rope scaling {kind!r} of this {model_type} model is not written; convert with "
                         f"llama.cpp's convert_hf_to_gguf.py")
    if model_type == "qwen3_moe":
        _check_moe(config)
    arch, permute = ARCHITECTURES[model_type]
    return MODEL_ARCH[arch], permute


def _check_moe(config) -> None:
    """What llama.cpp's qwen3moe graph assumes: every layer a MoE layer, and the top-k router
    weights renormalised to sum to one (Qwen3-30B-A3B's norm_topk_prob: true)."""
    if getattr(config, "mlp_only_layers", None) or getattr(config, "decoder_sparse_step", 1) != 1:
        raise ValueError("GGUF export: llama.cpp's qwen3moe has a MoE in every layer; this model has dense layers "
                         "(mlp_only_layers / decoder_sparse_step). Convert with llama.cpp's convert_hf_to_gguf.py")
    if not getattr(config, "norm_topk_prob", False):
        raise ValueError("GGUF export: llama.cpp's qwen3moe renormalises the chosen experts' router weights; this "
                         "model does not (norm_topk_prob: false), so llama.cpp would compute another model")


def expert_tensors(key: str, array: np.ndarray) -> list[tuple[str, np.ndarray]] | None:
    """A MoE layer's stacked expert weights under their GGUF names (None for other tensors)."""
    import gguf

    parts = key.split(".")
    if len(parts) != 6 or parts[:2] != ["model", "layers"] or parts[3:5] != ["mlp", "experts"]:
        return None
    name = lambda tensor: gguf.TENSOR_NAMES[tensor].format(bid=int(parts[2])) + ".weight"   # noqa: E731
    if parts[5] == "gate_up_proj":                    # (experts, 2 x ffn, hidden): gate rows, then up rows
        ffn = array.shape[1] // 2
        return [(name(gguf.MODEL_TENSOR.FFN_GATE_EXP), array[:, :ffn]),
                (name(gguf.MODEL_TENSOR.FFN_UP_EXP), array[:, ffn:])]
    if parts[5] == "down_proj":
        return [(name(gguf.MODEL_TENSOR.FFN_DOWN_EXP), array)]
    return None


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from Hugging Face's half-split rotary order to llama.cpp's interleaved one."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def rotary_heads(key: str, config, permute: bool) -> int | None:
    """How many heads llama.cpp's rotary row order permutes the Hugging Face weight `key` by
    (its attention q and k, in llama-arch models), or None."""
    if permute and key.endswith("q_proj.weight"):
        return config.num_attention_heads
    if permute and key.endswith("k_proj.weight"):
        return config.num_key_value_heads
    return None


def tensor_type(gguf_name: str, array: np.ndarray, weights: str, embeddings: str) -> str:
    from gguf import GGML_QUANT_SIZES

    if array.ndim == 1 or ".ffn_gate_inp." in gguf_name:     # norms, biases, a MoE's router
        return "f32"
    wanted = embeddings if gguf_name.startswith(("token_embd.", "output.")) else weights
    block = GGML_QUANT_SIZES[qtype_of(wanted)][0]
    return wanted if array.shape[-1] % block == 0 else "f16"


def _vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    from gguf import TokenType

    if getattr(tokenizer, "backend_tokenizer", None) is None or \
            tokenizer.backend_tokenizer.model.__class__.__name__ != "BPE":
        raise ValueError("GGUF export writes byte-level BPE tokenizers (GGUF's gpt2 model); this tokenizer is "
                         f"{type(tokenizer).__name__}: convert with llama.cpp's convert_hf_to_gguf.py")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:                       # embedding rows past the tokenizer's vocabulary
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(TokenType.CONTROL if added.get(token) else
                         TokenType.USER_DEFINED if token in added else TokenType.NORMAL)
    return tokens, types


def write(model_dir: Path, path: Path, *, weights: str, embeddings: str, name: str,
          tokenizer_pre: str | None = None, chat_template: str | None = None) -> dict:
    """`model_dir` (a merged Hugging Face folder) as the GGUF file `path`; returns the tensor
    count per GGUF type. `chat_template` replaces the folder's own (a base written for an adapter
    whose stage changed the template)."""
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    qtype_of(weights), qtype_of(embeddings)
    config = AutoConfig.from_pretrained(model_dir)
    arch, permute = architecture(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens, token_types = _vocabulary(tokenizer, config.vocab_size)
    # in the stored precision; each tensor goes to float32 only while it is quantized
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    state = model.state_dict()
    del model
    blocks = config.num_hidden_layers
    names = gguf.get_tensor_name_map(arch, blocks)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if getattr(config, "num_experts", None):
        writer.add_expert_count(config.num_experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
        writer.add_expert_feed_forward_length(config.moe_intermediate_size)
    writer.add_file_type(file_type(weights))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    if tokenizer_pre:
        writer.add_tokenizer_pre(tokenizer_pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=config.vocab_size)
    if not special.merges:
        raise ValueError(f"{model_dir}: tokenizer.json has no BPE merges to write")
    if chat_template is not None:
        special.chat_template = chat_template
    elif special.chat_template is None and tokenizer.chat_template:
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)

    counts: Counter = Counter()
    for key, tensor in state.items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue                             # llama.cpp reuses token_embd as the output head
        array = tensor.to(torch.float32).numpy()
        for gguf_name, part in expert_tensors(key, array) or [(names.get_name(key, try_suffixes=(".weight", ".bias")),
                                                               array)]:
            if gguf_name is None:
                raise ValueError(f"{model_dir}: tensor {key} has no GGUF name for {config.model_type}")
            rotary = rotary_heads(key, config, permute)
            if rotary:
                part = permute_rotary(part, rotary)
            kind = tensor_type(gguf_name, part, weights, embeddings)
            qtype = qtype_of(kind)
            data = gguf.quants.quantize(np.ascontiguousarray(part), qtype)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)  # the shape follows from the bytes
            counts[kind] += 1

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    log.info("wrote %s: %s", path, dict(counts))
    return dict(sorted(counts.items()))
