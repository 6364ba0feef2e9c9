"""Batched greedy generation with a model's chat template (evaluation, held-out selection), and LoRA
weights merged for the duration of sampling (RL rollouts)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from posttrain.core.progress import Progress, track
from posttrain.inference.dtype import weights_in

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
    Greedy by default, so numbers repeat exactly on CPU. `progress` labels progress lines.

    Greedy decoding keeps `batch_size` rows decoding at once and gives a finished row's place to
    the next conversation (`greedy_refilling`); sampling runs `model.generate` on fixed batches
    (its sampler and logits processors), as does greedy decoding of a model whose generation
    config asks for logits processing or whose cache cannot be refilled."""
    torch.manual_seed(seed)
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    stops = stop_ids(tokenizer)
    model.eval()
    if temperature <= 0 and refillable(model):
        prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        bar = Progress(progress, len(prompts), "answer") if progress else None
        ids = greedy_refilling(model, prompts, stops=stops, max_new_tokens=max_new_tokens,
                               slots=batch_size, on_finished=bar.update if bar else None)
        return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so generation continues the prompt
    outputs: list[str] = []
    try:
        starts = range(0, len(texts), batch_size)
        for i in track(starts, progress, len(starts), "batch") if progress else starts:
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stops,
                                     pad_token_id=tokenizer.pad_token_id, **sampling)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return outputs


# Generation-config fields that change greedy choices through a logits processor, with the
# value that leaves them off; greedy_refilling implements none of them.
_NEUTRAL_GENERATION = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
                       "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
                       "forced_bos_token_id": None, "forced_eos_token_id": None, "min_length": 0,
                       "min_new_tokens": None, "sequence_bias": None, "renormalize_logits": False}


def refillable(model) -> bool:
    """Whether greedy_refilling decodes `model` as `model.generate` would: a key/value cache of
    whole-sequence layers (no sliding window, no state-space layers) and no logits processing."""
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # noqa: BLE001 - a config DynamicCache cannot read: not one we can refill
        return False
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return False
    gen = getattr(model, "generation_config", None)
    return all(getattr(gen, k, v) in (v, None) for k, v in _NEUTRAL_GENERATION.items())


def greedy_refilling(model, prompts: list[list[int]], *, stops: list[int], max_new_tokens: int, slots: int,
                     stop_when: Callable[[list[int]], bool] | None = None,
                     on_finished: Callable[[], None] | None = None) -> list[list[int]]:
    """Greedy continuations of token-id `prompts` (each ending with its stop token when it stopped),
    up to `slots` of them decoding at once on one key/value cache. A row also ends when
    `stop_when(its new tokens)` is true (stop strings); `on_finished` is called as each row ends.

    Continuous batching: a row that stops leaves the batch at once and the next prompts are
    prefilled into the free places, so a batch never waits for its longest answer with finished
    rows in it. On one CPU core a decoding step costs little more at 64 rows than at 16
    (benchmarks/generation.py), so the refilled batch turns most of each step into answers.
    Rows are left-padded to the cache's length, positions count each row's own tokens, and
    the attention mask hides the padding: a row's tokens are what it alone would produce, up to
    float rounding (a matrix product's rounding can depend on how many rows it has). The
    schedule depends only on the prompts and `slots`, so the output repeats exactly."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    stop_set, device = set(stops), model.device
    out: list[list[int]] = [[] for _ in prompts]
    waiting = list(range(len(prompts)))[::-1]   # popped from the end: prompt order
    rows: list[int] = []                         # the prompt each batch row answers
    cache = mask = positions = logits = None
    # Prefilling one prompt at a time runs a matrix product per prompt; waiting for a quarter of
    # the places to free up batches the prefill at the cost of a few idle places for a few steps.
    refill_at = max(1, slots // 4)
    with torch.no_grad():
        while waiting or rows:
            if waiting and slots - len(rows) >= min(refill_at, len(waiting)):
                new = [waiting.pop() for _ in range(min(slots - len(rows), len(waiting)))]
                new_logits, new_cache, new_mask = _prefill(model, [prompts[i] for i in new])
                if rows:
                    cache, mask = _join(cache, mask, new_cache, new_mask)
                    logits = torch.cat([logits, new_logits])
                    positions = torch.cat([positions, new_mask.sum(1)])
                else:
                    cache, mask, logits, positions = new_cache, new_mask, new_logits, new_mask.sum(1)
                rows += new
            tokens = logits.argmax(-1)
            going = []
            for j, (i, t) in enumerate(zip(rows, tokens.tolist())):
                out[i].append(t)
                if t in stop_set or len(out[i]) >= max_new_tokens or (stop_when is not None and stop_when(out[i])):
                    if on_finished is not None:
                        on_finished()
                else:
                    going.append(j)
            if len(going) < len(rows):
                rows = [rows[j] for j in going]
                if not rows:
                    cache = None
                    continue
                keep = torch.tensor(going, device=device)
                tokens, positions, mask = tokens[keep], positions[keep], mask[keep]
                cache.batch_select_indices(keep)
                cache, mask = _drop_padding(cache, mask)
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions[:, None],
                           cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
            positions = positions + 1
    return out


def _prefill(model, prompts: list[list[int]]):
    """The last-token logits, the key/value cache and the attention mask of left-padded `prompts`."""
    from transformers import DynamicCache

    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=model.device)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, device=model.device)
        mask[r, width - len(p):] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1].float()
    return logits, cache, mask


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _join(cache, mask, new_cache, new_mask):
    """Rows of two caches in one: the shorter side left-padded (masked) to the longer's length."""
    width = max(mask.shape[1], new_mask.shape[1])
    for layer, new in zip(cache.layers, new_cache.layers):
        layer.keys = torch.cat([_left_pad(layer.keys, width, 2), _left_pad(new.keys, width, 2)])
        layer.values = torch.cat([_left_pad(layer.values, width, 2), _left_pad(new.values, width, 2)])
    return cache, torch.cat([_left_pad(mask, width, 1), _left_pad(new_mask, width, 1)])


def _drop_padding(cache, mask):
    """Drop the cache positions no remaining row attends to (padding of rows that left)."""
    used = mask.any(0)
    if bool(used.all()):
        return cache, mask
    cols = used.nonzero().squeeze(1)
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, cols], layer.values[:, :, cols]
    return cache, mask[:, cols]


def assistant_nll(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16) -> tuple[float, int]:
    """Summed negative log-likelihood of the assistant tokens (generation spans of the chat
    template) and their count: perplexity = exp(nll / count).

    Conversations of similar length share a batch (sorted, right-padded: little compute goes to
    padding), and the LM head runs only at the positions that predict an assistant token of some
    row of the batch: on the demo model the head is a fifth of a token's FLOPs, and prompts are
    about half the tokens. Batches of 16 take less time than one conversation at a time (measured
    by benchmarks/perplexity.py; figures in benchmarks/RESULTS.md, "Perplexity")."""
    encoded = [tokenizer.apply_chat_template(c, return_dict=True, return_assistant_tokens_mask=True)
               for c in conversations]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = [encoded[i] for i in order[start:start + batch_size]]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)  # position t predicts an assistant token t+1
        for row, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[row, :n] = torch.tensor(e["input_ids"])
            attention[row, :n] = 1
            scored[row, :n - 1] = torch.tensor(e["assistant_masks"][1:n], dtype=torch.bool)
        keep = scored.any(dim=0).nonzero().squeeze(1)
        if not len(keep):
            continue
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device),
                           logits_to_keep=keep.to(device)).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, keep + 1].flatten().to(device),
                                                reduction="none").view(len(batch), -1)
        mask = scored[:, keep].to(device)
        total += float(nll[mask].sum())
        count += int(mask.sum())
    return total, count


@contextmanager
def merged_adapter(model):
    """The LoRA adapter merged into the weights for the duration (generation only). Decoding with
    an unmerged adapter runs two extra small matmuls per targeted layer and token: with adapters
    on every layer, CPU sampling ran faster merged (measured by benchmarks/rl_step.py; figures in
    benchmarks/RESULTS.md, "Training throughput"). Merging adds
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


@contextmanager
def sampling_weights(model, dtype=None):
    """What a training loop samples from: the adapter merged in (`merged_adapter`), then the weights
    as `dtype` copies (posttrain.inference.dtype.weights_in; the training precision's
    `sampling_dtype`, None to sample in the weights' own dtype)."""
    with merged_adapter(model), weights_in(model, dtype):
        yield model
