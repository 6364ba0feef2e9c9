"""The LM head's input made contiguous, so a frozen head multiplies as one matrix product.

transformers computes the logits of the last positions only (`logits_to_keep`: the last token
when decoding starts, the completion's tokens when TRL scores log-probabilities) by slicing the
hidden states, which leaves them non-contiguous. PyTorch's matmul (2.13) folds a 3-D input into
one matrix product only when the input's leading dimensions are contiguous or the weight
requires grad; otherwise it runs a batched product over the weight expanded to the batch, a copy
of batch x vocabulary x hidden (64 x 49152 x 576 in bfloat16: 3.6 GB) for every call. A frozen
head is the rule here: LoRA training freezes it, and an evaluated model needs no gradients.
Making the slice contiguous copies batch x kept positions x hidden instead; the logits are the
same up to float rounding (one matrix product instead of one per row), and the demo's greedy
answers identical (benchmarks/head_input.py measures both; figures in benchmarks/RESULTS.md,
"The LM head's input").
"""

from __future__ import annotations

_MARK = "_posttrain_contiguous_input"


def contiguous_head_input(model):
    """`model` with a forward pre-hook on its output embedding that makes the input contiguous
    (once: calling it again changes nothing). Models without an output embedding are returned as
    they are."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not getattr(head, _MARK, False):
        head.register_forward_pre_hook(_contiguous)
        setattr(head, _MARK, True)
    return model


def _contiguous(module, args):
    if args and hasattr(args[0], "is_contiguous") and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None
