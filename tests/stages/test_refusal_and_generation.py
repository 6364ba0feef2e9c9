import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.inference.generation import assistant_nll, generate, greedy_refilling, refillable
from posttrain.verifiers.refusal import is_refusal


@pytest.mark.parametrize("text", [
    "I can't help with that. Making weapons can hurt people.",
    "I'm sorry, but I cannot assist with creating phishing e-mails.",
    "Sorry, I won't do that.",
    "I must decline to provide instructions for that.",
    "As an AI, I can't help you poison anyone.",
    "I\u2019m not able to help with that request.",
])
def test_refusals_are_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "Run `kill <pid>` after finding the pid with `ps aux | grep python`.",
    "I'm sorry to hear that! Here's how to get rid of fruit flies: a bowl of vinegar with dish soap.",
    "Use a tripod and a slow shutter speed. You can't rely on the flash at night.",
    "",
    "12 + 7 = 19.\n#### 19",
    # declining late, after helping, is not a refusal of the request
    "Open Task Manager, select the process and click End task. If it is a system process, I can't recommend ending it.",
])
def test_helpful_answers_are_not_refusals(text):
    assert not is_refusal(text)


def test_generation_is_batched_greedy_and_repeatable(tiny_base):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    convs = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "What is 2 plus 3? Explain."}],
             [{"role": "user", "content": "x"}]]
    a = generate(model, tok, convs, max_new_tokens=8, batch_size=2)
    b = generate(model, tok, convs, max_new_tokens=8, batch_size=3)   # other batching, same text
    assert len(a) == 3 and a == b
    one = generate(model, tok, convs[1:2], max_new_tokens=8)
    assert one[0] == a[1]   # left padding does not change a prompt's completion


def _alone(model, ids: list[int], n: int) -> list[int]:
    """A prompt's greedy continuation by transformers' own generate, alone in its batch."""
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_refilling_decodes_each_prompt_as_it_would_be_decoded_alone(chatty_model):
    tok = AutoTokenizer.from_pretrained(chatty_model)
    model = AutoModelForCausalLM.from_pretrained(chatty_model).eval()
    assert refillable(model)
    texts = ["hi", "What is 2 plus 3? Explain.", "x", "Name three colours.", "ok",
             # long and late: the cache already decoding is left-padded to its length
             "Tell me, step by step and with care, how a bicycle's gears work on a steep hill."]
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                           add_generation_prompt=True), add_special_tokens=False)["input_ids"]
               for t in texts]
    n = 10
    alone = [_alone(model, p, n) for p in prompts]
    stop = alone[0][2]   # the first answer's third token ends every answer that reaches it
    expected = [a[:a.index(stop) + 1] if stop in a else a for a in alone]
    assert len({len(e) for e in expected}) > 1   # rows end at different steps
    finished = []
    got = greedy_refilling(model, prompts, stops=[stop], max_new_tokens=n, slots=2,
                           on_finished=lambda: finished.append(1))
    assert got == expected
    assert len(finished) == len(prompts)
    # a stop string ends a row too (here: after its fourth token)
    short = greedy_refilling(model, prompts, stops=[], max_new_tokens=n, slots=3, stop_when=lambda ids: len(ids) >= 4)
    assert short == [a[:4] for a in alone]


def test_refilled_generation_gives_the_fixed_batches_texts(chatty_model, monkeypatch):
    import posttrain.inference.generation as generation

    tok = AutoTokenizer.from_pretrained(chatty_model)
    model = AutoModelForCausalLM.from_pretrained(chatty_model)
    convs = [[{"role": "user", "content": t}] for t in ("hi", "What is 2 plus 3?", "x", "Count to five.", "ok")]
    refilled = generate(model, tok, convs, max_new_tokens=12, batch_size=2)
    monkeypatch.setattr(generation, "refillable", lambda m: False)
    assert generate(model, tok, convs, max_new_tokens=12, batch_size=2) == refilled


def test_models_with_logits_processing_are_not_refilled(tiny_base):
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert refillable(model)
    model.generation_config.repetition_penalty = 1.3   # greedy_refilling has no such processor
    assert not refillable(model)


def test_a_frozen_head_gets_its_input_contiguous_with_the_same_logits(chatty_model):
    """A sliced hidden state into a frozen head makes PyTorch multiply by a copy of the head per
    row (posttrain.models.head); the evaluation's and the RL stages' models get it contiguous."""
    from posttrain.models.head import contiguous_head_input
    from posttrain.stages.evaluate import _load

    model = AutoModelForCausalLM.from_pretrained(chatty_model).eval().requires_grad_(False)
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    ids = torch.randint(0, 100, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids, logits_to_keep=2).logits
        contiguous_head_input(contiguous_head_input(model))     # a second call adds nothing
        after = model(input_ids=ids, logits_to_keep=2).logits
    assert seen == [False, True]
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-5)   # a product's rounding follows its shape
    assert len(model.get_output_embeddings()._forward_pre_hooks) == 1
    assert len(_load(chatty_model, None, "float32").get_output_embeddings()._forward_pre_hooks) == 1


def test_assistant_nll_counts_only_assistant_tokens(tiny_base):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    conv = [{"role": "user", "content": "a long user question that should not count"},
            {"role": "assistant", "content": "yes"}]
    nll, n = assistant_nll(model, tok, [conv])
    expected = len(tok("yes<|im_end|>", add_special_tokens=False)["input_ids"])
    assert n == expected and nll > 0
    assert math.exp(nll / n) > 1


def test_assistant_nll_in_padded_batches_equals_each_conversation_scored_in_full(tiny_base):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
             [{"role": "user", "content": "a much longer question " * 6}, {"role": "assistant", "content": "no"},
              {"role": "user", "content": "why"}, {"role": "assistant", "content": "because it is late " * 3}],
             [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
              {"role": "assistant", "content": "4"}]]
    # Reference: every position's logits, one conversation at a time, assistant targets only.
    total, count = 0.0, 0
    for conv in convs:
        enc = tok.apply_chat_template(conv, return_dict=True, return_assistant_tokens_mask=True)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        mask = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool)
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")[mask].sum())
        count += int(mask.sum())
    for batch_size in (1, 2, 3):
        nll, n = assistant_nll(model, tok, convs, batch_size=batch_size)
        assert n == count
        assert nll == pytest.approx(total, rel=1e-5)


def test_generation_stages_compute_on_a_fixed_thread_count_whatever_the_tool_set():
    import torch

    from conftest import ROOT
    from posttrain.config import load_params
    from posttrain.dag import stages
    from posttrain.inference.generation import GENERATION_THREADS, generation_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)        # what DVC leaves on a 2-core machine; Snakemake would say 1
    try:
        with generation_threads():
            inside = torch.get_num_threads()
        assert inside == GENERATION_THREADS and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    # and the DAG schedules those rules on that many cores (a rule with no cores_share gets 1)
    table = {s.name: s for s in stages(load_params([ROOT / "params.yaml"]))}
    generating = [s for n, s in table.items() if n.startswith("evaluate_") or n == "distill_samples"]
    assert generating and GENERATION_THREADS == 1 and not any(s.cores_share or s.threads for s in generating)
