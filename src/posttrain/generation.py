"""Batched greedy generation with a model's chat template (evaluation, held-out selection), and LoRA
weights merged for the duration of sampling (RL rollouts)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


# The stages that mostly generate (evaluation, the distillation teacher's sampling) compute on
# this many CPU threads whichever tool starts them: Snakemake sets OMP_NUM_THREADS to a rule's
# threads and DVC sets nothing, and a float sum can end in another last bit when more threads
# split it, which a greedy choice can follow, so a fixed count keeps both tools' numbers identical.
# One is also the better use of a small machine: decoding a small model gains little from a
# second thread, and two such stages run side by side (README, Evaluation). The DAG gives
# these rules the same count.
GENERATION_THREADS = 1


@contextmanager
def generation_threads():
    """Compute on GENERATION_THREADS CPU threads inside the block (what a GPU computes is not
    affected); the previous count comes back after it."""
    before = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(GENERATION_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stop_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: EOS and ChatML's <|im_end|> where the vocabulary has it."""
    return [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
            if isinstance(t, int) and t != tokenizer.unk_token_id]


def generate(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 64,
             batch_size: int = 8, temperature: float = 0.0, seed: int = 0, progress: str | None = None) -> list[str]:
    """One completion per conversation (a list of messages ending with a user turn).
    Greedy by default, so numbers repeat exactly on CPU. `progress` names a progress bar."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so generation continues the prompt
    stops = stop_ids(tokenizer)
    outputs: list[str] = []
    model.eval()
    try:
        for i in tqdm(range(0, len(conversations), batch_size), desc=progress, unit="batch", disable=progress is None):
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                     for c in conversations[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stops,
                                     pad_token_id=tokenizer.pad_token_id, **sampling)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return outputs


def assistant_nll(model, tokenizer, conversations: list[list[dict]], batch_size: int = 8) -> tuple[float, int]:
    """Summed negative log-likelihood of the assistant tokens (generation spans of the chat
    template) and their count: perplexity = exp(nll / count)."""
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(conversations), batch_size):
        for conv in conversations[i:i + batch_size]:
            enc = tokenizer.apply_chat_template(conv, return_dict=True, return_assistant_tokens_mask=True)
            ids = torch.tensor([enc["input_ids"]], device=model.device)
            mask = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool, device=model.device)
            with torch.no_grad():
                logits = model(ids).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            total += float(nll[mask].sum())
            count += int(mask.sum())
    return total, count


@contextmanager
def merged_adapter(model):
    """The LoRA adapter merged into the weights for the duration (generation only). Decoding with
    an unmerged adapter runs two extra small matmuls per targeted layer and token: with adapters
    on every layer, CPU sampling ran 1.2-1.35x faster merged (benchmarks/rl_step.py). Merging adds
    B@A into the weights and unmerging subtracts it, exact up to float rounding; quantized weights
    (QLoRA) would lose precision at every round trip, so they are left alone."""
    quantized = getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_loaded_in_4bit", False)
    if not getattr(model, "peft_config", None) or quantized:
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()
