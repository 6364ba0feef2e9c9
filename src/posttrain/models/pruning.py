"""Depth pruning: a student made from the base model by keeping a subset of its layers.

Minitron-style compression: the kept layers keep their trained weights (embeddings, norms and
head included), so the student starts far closer to the teacher than a random model of the same
shape, and distillation heals the gap.
"""

from __future__ import annotations

import contextlib
import copy
import re

import torch
from transformers import AutoModelForCausalLM
from transformers.initialization import no_init_weights

_LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")


def kept_layers(n_layers: int, keep_every: int) -> list[int]:
    """Layers 0, k, 2k, ... and always the last one."""
    if keep_every < 2:
        raise ValueError(f"keep_every must be at least 2 (got {keep_every}): 1 would keep every layer")
    keep = list(range(0, n_layers, keep_every))
    if keep[-1] != n_layers - 1:
        keep.append(n_layers - 1)
    return keep


def layer_importance(model, tokenizer, conversations: list[list[dict]]) -> list[float]:
    """For each layer, the held-out perplexity of the model without it (assistant tokens of
    `conversations`): the higher, the more the layer matters."""
    import math

    from tqdm.auto import tqdm

    from posttrain.inference.generation import assistant_nll

    n = model.config.get_text_config().num_hidden_layers
    out = []
    for i in tqdm(range(n), desc="layer importance", unit="layer"):
        with _without_layer(model, i) as pruned:
            nll, count = assistant_nll(pruned, tokenizer, conversations)
        out.append(math.exp(nll / count) if count else float("inf"))
    return out


@contextlib.contextmanager
def _without_layer(model, i: int):
    """`model` with its layer `i` taken out of the layer list for the duration: the same forward
    pass as `depth_pruned` without it, but no copy of the weights per layer (for a 30B teacher,
    a second copy in memory). Architectures whose layer list is not one `layers` module get the
    copy."""
    n = model.config.get_text_config().num_hidden_layers
    owners = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
              if name == "layers" and isinstance(child, torch.nn.ModuleList) and len(child) == n]
    if len(owners) != 1:
        yield depth_pruned(model, [j for j in range(n) if j != i])
        return
    parent, name = owners[0]
    layers = getattr(parent, name)
    setattr(parent, name, torch.nn.ModuleList([layer for j, layer in enumerate(layers) if j != i]))
    try:
        yield model
    finally:
        setattr(parent, name, layers)


def least_important_dropped(importance: list[float], n_drop: int) -> list[int]:
    """The layers kept after dropping the `n_drop` least important ones (ties: the later layer
    goes first)."""
    if not 1 <= n_drop < len(importance):
        raise ValueError(f"cannot drop {n_drop} of {len(importance)} layers")
    order = sorted(range(len(importance)), key=lambda i: (importance[i], -i))
    return sorted(set(range(len(importance))) - set(order[:n_drop]))


def depth_pruned(model, keep: list[int]):
    """A new model of the same architecture with only the layers in `keep`, renumbered 0..len-1."""
    config = copy.deepcopy(model.config)
    text = config.get_text_config()
    n = text.num_hidden_layers
    if not keep or sorted(set(keep)) != list(keep) or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"layers to keep must be increasing indices below {n}, got {keep}")
    if getattr(text, "decoder_sparse_step", 1) not in (None, 1):
        # which layers are MoE follows from the layer index; renumbering would change it
        raise ValueError(f"{text.model_type}: decoder_sparse_step {text.decoder_sparse_step} makes a layer's kind "
                         f"depend on its index; depth pruning supports every-layer MoE or dense models only")
    text.num_hidden_layers = len(keep)
    if getattr(text, "layer_types", None):
        text.layer_types = [text.layer_types[i] for i in keep]
    if getattr(text, "mlp_only_layers", None):
        text.mlp_only_layers = [new for new, old in enumerate(keep) if old in text.mlp_only_layers]
    if getattr(text, "max_window_layers", None) is not None:
        text.max_window_layers = sum(1 for old in keep if old < text.max_window_layers)
    renumber = {old: new for new, old in enumerate(keep)}
    state = {}
    for name, tensor in model.state_dict().items():
        m = _LAYER.search(name)
        if m:
            old = int(m.group(2))
            if old not in renumber:
                continue
            name = f"{name[:m.start(2)]}{renumber[old]}{name[m.end(2):]}"
        state[name] = tensor
    # Every weight is loaded from `state` right after, so random initialisation (seconds for a
    # 135M model, and layer ranking builds one model per layer) is skipped; skipping it also skips
    # the tying of input and output embeddings, which tie_weights does once the weights are in.
    with no_init_weights():
        student = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    student.load_state_dict(state, strict=True)
    student.tie_weights()
    student.generation_config = copy.deepcopy(model.generation_config)
    return student
