import math

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.generation import assistant_nll, generate
from posttrain.refusal import is_refusal


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


def test_assistant_nll_counts_only_assistant_tokens(tiny_base):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    conv = [{"role": "user", "content": "a long user question that should not count"},
            {"role": "assistant", "content": "yes"}]
    nll, n = assistant_nll(model, tok, [conv])
    expected = len(tok("yes<|im_end|>", add_special_tokens=False)["input_ids"])
    assert n == expected and nll > 0
    assert math.exp(nll / n) > 1


def test_generation_stages_compute_on_a_fixed_thread_count_whatever_the_tool_set():
    import torch

    from conftest import ROOT
    from posttrain.config import load_params
    from posttrain.generation import GENERATION_THREADS, generation_threads
    from posttrain.pipeline import stages

    before = torch.get_num_threads()
    torch.set_num_threads(2)        # what DVC leaves on a 2-core machine; Snakemake would say 1
    try:
        with generation_threads():
            inside = torch.get_num_threads()
        assert inside == GENERATION_THREADS and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    # and the DAG schedules those rules on that many cores (a rule that is not all_cores gets 1)
    table = {s.name: s for s in stages(load_params([ROOT / "params.yaml"]))}
    generating = [s for n, s in table.items() if n.startswith("evaluate_") or n == "distill_samples"]
    assert generating and GENERATION_THREADS == 1 and not any(s.all_cores or s.threads for s in generating)
