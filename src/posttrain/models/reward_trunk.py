"""Several reward models scoring the same responses, their shared layers computed once.

The reward models of a DAG are LoRA adapters on one init model, and with `reward.lora.layers`
only the top layers carry an adapter: every layer below is the init's own, identical in each
reward model. `score_aspects` runs those layers once per distinct token sequence, keeps the hidden
states, and runs only the adapted layers, the final norm and the score head per reward model.
The demo's evaluation scores 440 responses with three reward models (8 adapted layers of 30):
a third less work than three full passes. Reward models that share nothing (different inits, a
fully fine-tuned one, an architecture without a `layers` list) are scored one after another.

    scores = score_aspects({"helpful": Path("results/reward/helpful"), ...},
                           {"helpful": (prompts, responses), ...})
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from posttrain.core.manifest import require_manifest
from posttrain.models.reward_model import RewardModel, encode, padded_batches


def score_aspects(folders: dict[str, Path], requests: dict[str, tuple[list, list]],
                  batch_size: int = 16, dtype: str = "auto") -> dict[str, list[float]]:
    """Normalised scores (as `RewardModel.score`) of each aspect's (prompts, responses) by that
    aspect's reward model in `folders`, loaded in `dtype` (as `RewardModel.load`) one at a time."""
    aspects = [a for a in folders if a in requests]
    shared = _shared_layers([folders[a] for a in aspects])
    out: dict[str, list[float]] = {}
    trunk: dict[tuple, torch.Tensor] = {}
    encoded: dict[str, list[tuple]] = {}
    for aspect in aspects:
        rm = RewardModel.load(folders[aspect], dtype=dtype)
        if not shared or _backbone(rm.model) is None:
            out[aspect] = rm.score(*requests[aspect], batch_size=batch_size)
            continue
        if not trunk:   # the first reward model computes the shared layers for every aspect's sequences
            encoded = {a: _encoded(rm.tokenizer, folders[a], *requests[a]) for a in aspects}
            every = {s for seqs in encoded.values() for s in seqs}
            trunk = _trunk_states(rm.model, rm.tokenizer.pad_token_id, sorted(every, key=len), shared, batch_size)
        raw = _upper_scores(rm.model, rm.tokenizer.pad_token_id, encoded[aspect], trunk, shared, batch_size)
        out[aspect] = [(r - rm.mean) / rm.std for r in raw]
        del rm
    return out


def _shared_layers(folders: list[Path]) -> int:
    """How many bottom layers the reward models in `folders` share unchanged: the layers below
    the lowest adapted one when all are LoRA adapters (on only some layers) of one init model,
    else 0."""
    if len(folders) < 2:
        return 0
    inits, firsts = set(), []
    for folder in folders:
        manifest = require_manifest(folder, "reward")
        config = Path(folder) / "adapter" / "adapter_config.json"
        if not config.is_file():
            return 0
        layers = json.loads(config.read_text()).get("layers_to_transform")
        if not layers:
            return 0
        inits.add(manifest["inputs"]["init"]["sha256"])
        firsts.append(min([layers] if isinstance(layers, int) else layers))
    return min(firsts) if len(inits) == 1 else 0


def _encoded(tokenizer, folder: Path, prompts: list, responses: list) -> list[tuple]:
    turns = json.loads((Path(folder) / "metrics.json").read_text()).get("context_turns")
    return [tuple(encode(tokenizer, p, r, turns)) for p, r in zip(prompts, responses)]


def _backbone(model):
    """The decoder stack (embeddings, `layers`, `norm`) under a PEFT-wrapped classification model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(inner, "base_model", None)
    ok = backbone is not None and hasattr(backbone, "layers") and hasattr(backbone, "norm") and hasattr(inner, "score")
    return backbone if ok else None


@contextlib.contextmanager
def _only_layers(backbone, keep: slice, norm: bool):
    """The backbone with only `keep` of its layers (and without its final norm unless `norm`)."""
    layers, final = backbone.layers, backbone.norm
    backbone.layers = layers[keep]
    if not norm:
        backbone.norm = torch.nn.Identity()
    try:
        yield backbone
    finally:
        backbone.layers, backbone.norm = layers, final


@torch.no_grad()
def _trunk_states(model, pad_token_id: int, seqs: list[tuple], layers: int, batch_size: int) -> dict:
    """Each sequence's hidden states after the first `layers` layers, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    states = {}
    with _only_layers(_backbone(model), slice(0, layers), norm=False) as trunk:
        for idx, ids, mask in padded_batches(seqs, pad_token_id, batch_size):
            hidden = trunk(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.cpu()
            for row, i in enumerate(idx):
                states[seqs[i]] = hidden[row, :len(seqs[i])]
    return states


@torch.no_grad()
def _upper_scores(model, pad_token_id: int, seqs: list[tuple], trunk: dict, layers: int,
                  batch_size: int) -> list[float]:
    """Raw rewards from the trunk's hidden states: the layers from `layers` up, the norm, the
    score head, read where the classification model reads it (the last token that is not
    padding)."""
    model.eval()
    device = next(model.parameters()).device
    head = (model.get_base_model() if hasattr(model, "get_base_model") else model).score
    out = [0.0] * len(seqs)
    with _only_layers(_backbone(model), slice(layers, None), norm=True) as upper:
        for idx, ids, mask in padded_batches(seqs, pad_token_id, batch_size):
            hidden = torch.zeros(len(idx), ids.shape[1], trunk[seqs[idx[0]]].shape[-1], dtype=trunk[seqs[idx[0]]].dtype)
            for row, i in enumerate(idx):
                hidden[row, :len(seqs[i])] = trunk[seqs[i]]
            last = upper(inputs_embeds=hidden.to(device), attention_mask=mask.to(device)).last_hidden_state
            logits = head(last)
            # as transformers' sequence classification: the rightmost token that is not the pad token
            positions = torch.arange(ids.shape[1])
            read = ((ids != pad_token_id).long() * positions).argmax(-1)
            for row, i in enumerate(idx):
                out[i] = float(logits[row, read[row], 0])
    return out
