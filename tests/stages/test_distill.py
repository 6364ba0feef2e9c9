"""Distillation: depth pruning, rejection sampling, the logit-level loss and both students on tiny
models."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, TINY_OVERLAY, read_jsonl, write_jsonl
from posttrain import dag
from posttrain.config import load_params
from posttrain.models.pruning import depth_pruned, kept_layers
from posttrain.models.sources import build_tiny_model, build_tiny_tokenizer
from posttrain.stages import distill, prepare_data
from posttrain.training.distillation import Teacher


def _deep_tiny(arch: str, layers: int = 6, tied: bool = True):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(arch, tokenizer)
    config = model.config
    config.num_hidden_layers = layers
    config.tie_word_embeddings = tied
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[0]] * layers
    torch.manual_seed(1)
    return AutoModelForCausalLM.from_config(config), tokenizer


def test_kept_layers_are_every_kth_and_the_last():
    assert kept_layers(30, 2) == list(range(0, 30, 2)) + [29]
    assert kept_layers(6, 3) == [0, 3, 5]
    assert kept_layers(7, 3) == [0, 3, 6]
    with pytest.raises(ValueError, match="at least 2"):
        kept_layers(6, 1)


@pytest.mark.parametrize("arch, tied", [("llama", True), ("qwen3_moe", True), ("llama", False)])
def test_a_pruned_model_keeps_the_chosen_layers_weights(arch, tied):
    model, _ = _deep_tiny(arch, tied=tied)
    student = depth_pruned(model, [0, 3, 5])
    assert student.config.num_hidden_layers == 3
    ours, theirs = model.state_dict(), student.state_dict()
    for new, old in enumerate([0, 3, 5]):
        for name, tensor in theirs.items():
            if f"layers.{new}." in name:
                assert torch.equal(tensor, ours[name.replace(f"layers.{new}.", f"layers.{old}.")]), name
    assert torch.equal(theirs["model.embed_tokens.weight"], ours["model.embed_tokens.weight"])
    ids = torch.tensor([[1, 2, 3, 4]])
    assert student(ids).logits.shape == model(ids).logits.shape
    # keeping every layer is the same model (no weight left uninitialised), tied as the model is
    same = depth_pruned(model, list(range(6)))
    assert torch.allclose(same(ids).logits, model(ids).logits)
    for m in (model, student, same):
        assert (m.lm_head.weight is m.get_input_embeddings().weight) == tied
    assert torch.equal(student.lm_head.weight, model.lm_head.weight)
    with pytest.raises(ValueError, match="increasing"):
        depth_pruned(model, [3, 0])


def test_divergence_is_zero_against_itself_and_the_forward_kl_otherwise(tmp_path, tiny_base):
    teacher = Teacher(tiny_base, weight=1.0, beta=0.0, temperature=1.0)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    labels = torch.tensor([[-100, -100, 7, 8, 9]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    same = teacher.model(input_ids=ids).logits
    assert float(teacher.divergence(same, inputs)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn_like(same)
    p = torch.log_softmax(same[0, 1:4].float(), -1)        # positions predicting the labelled tokens
    q = torch.log_softmax(other[0, 1:4].float(), -1)
    expected = (p.exp() * (p - q)).sum(-1).mean()           # KL(teacher || student), per token
    assert float(teacher.divergence(other, inputs)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_divergence_on_the_labelled_positions_is_trls_masked_one_exactly(tiny_base, beta):
    """Picking the labelled positions before the softmaxes must change neither the loss nor its
    gradient by a bit: the weights the students train to stay those of TRL's formulation."""
    from trl.experimental.gkd import GKDTrainer

    teacher = Teacher(tiny_base, weight=0.5, beta=beta, temperature=0.9)
    torch.manual_seed(0)
    ids = torch.randint(5, 60, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100             # prompts
    labels[1, 9:] = -100             # padding at the end of the second row
    inputs = {"input_ids": ids, "attention_mask": (labels != -100) | (torch.arange(12) < 9), "labels": labels}
    student = torch.randn(2, 12, teacher.model.config.vocab_size, requires_grad=True)
    ours = teacher.divergence(student, inputs)
    with torch.no_grad():
        logits = teacher.model(input_ids=ids, attention_mask=inputs["attention_mask"], use_cache=False).logits
    theirs = GKDTrainer.generalized_jsd_loss(student[:, :-1], logits[:, :-1], labels=labels[:, 1:], beta=beta,
                                             temperature=0.9)
    assert torch.equal(ours, theirs)
    assert torch.equal(torch.autograd.grad(ours, student)[0], torch.autograd.grad(theirs, student)[0])


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    overlay = tmp_path_factory.mktemp("distill") / "ckpt.yaml"
    overlay.write_text(json.dumps({"distill": {"checkpoint_dir": str(overlay.parent / "ckpt")}}))
    return load_params([ROOT / "params.yaml", TINY_OVERLAY, overlay])


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_base, params):
    tmp = tmp_path_factory.mktemp("distill_data")
    prompts = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b), "subset": "arithmetic"}
               for a in range(2, 9) for b in (3, 5)]
    sft = [{"messages": [{"role": "user", "content": f"What is {a} plus 4?"},
                         {"role": "assistant", "content": f"{a} + 4 = {a + 4}\n#### {a + 4}"}],
            "subset": "arithmetic" if a % 2 else "sums"} for a in range(20)]
    local = params.model_copy(deep=True)
    local.data.cleaning.near_dup = False
    local.data.val_fraction = 0.2
    prepare_data.main(local, "prompts", [str(write_jsonl(tmp / "p.jsonl", prompts))], tmp / "prompts",
                      tokenizer_dir=tiny_base)
    prepare_data.main(local, "sft", [str(write_jsonl(tmp / "s.jsonl", sft))], tmp / "sft", tokenizer_dir=tiny_base)
    return tmp


def test_rejection_sampling_counts_every_answer_and_writes_sft_rows(tmp_path, tiny_base, data, params):
    out = tmp_path / "samples"
    distill.samples(params, tiny_base, data / "prompts", out)
    report = json.loads((out / "metrics.json").read_text())
    accepted, rejected = read_jsonl(out / "train.jsonl"), read_jsonl(out / "rejected.jsonl")
    assert report["samples"] == report["prompts"] * 2 == len(accepted) + len(rejected)
    assert report["accepted"] == len(accepted) > 0
    counts = report["subsets"]["arithmetic"]
    assert counts["samples"] == sum(v for k, v in counts.items() if k not in ("samples", "prompts",
                                                                              "prompts_with_an_answer"))
    row = accepted[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and row["messages"][1]["content"]
    assert len({r["source_id"] for r in accepted}) == len(accepted)          # keep_per_prompt: 1
    # a strict verifier the random model never satisfies rejects everything: no empty dataset
    strict = params.model_copy(deep=True)
    strict.distill.sampling.rewards = [type(strict.distill.sampling.rewards[0])(name="accuracy")]
    strict.distill.sampling.min_reward = 1.0
    with pytest.raises(ValueError, match="accepted none"):
        distill.samples(strict, tiny_base, data / "prompts", tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_students_train_from_the_pruned_base_with_and_without_the_teacher(tmp_path, tiny_base, data, params):
    student_base = tmp_path / "student_base"
    distill.student_base(params, tiny_base, student_base)
    manifest = json.loads((student_base / "manifest.json").read_text())
    assert manifest["source"]["layers_kept"] == [0, 1] and manifest["stage"] == "student-base"
    distill.samples(params, tiny_base, data / "prompts", tmp_path / "samples")

    distill.student(params, student_base, data / "sft", tmp_path / "student", samples_dir=tmp_path / "samples",
                    teacher_dir=tiny_base)
    log = read_jsonl_csv(tmp_path / "student" / "log.csv")
    assert any(r["kd_loss"] not in ("", None) for r in log)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "student" / "merged")
    manifest = json.loads((tmp_path / "student" / "manifest.json").read_text())
    assert {"samples", "teacher", "base", "data"} <= set(manifest["inputs"])

    distill.student(params, student_base, data / "sft", tmp_path / "baseline", baseline=True)
    log = read_jsonl_csv(tmp_path / "baseline" / "log.csv")
    assert "kd_loss" not in log[0]
    assert "samples" not in json.loads((tmp_path / "baseline" / "manifest.json").read_text())["inputs"]
    with pytest.raises(ValueError, match="--samples"):
        distill.student(params, student_base, data / "sft", tmp_path / "x")


def read_jsonl_csv(path):
    import csv

    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_the_dag_gets_the_distillation_stages_from_the_last_rl_stage(params):
    table = {s.name: s for s in dag.stages(params)}
    assert {"student_base", "distill_samples", "distill_baseline", "distill", "evaluate_distilled",
            "evaluate_student_sft"} <= set(table)
    assert table["distill_samples"].args[table["distill_samples"].args.index("--teacher") + 1] == "results/rl/reasoning"
    assert "results/rl/reasoning" in table["distill"].deps
    report = table["report"]
    assert "results/eval/distilled" in report.deps and "results/distill/student" in report.deps
    bad = params.model_copy(deep=True)
    bad.distill.teacher = "nope"
    with pytest.raises(ValueError, match="distill.teacher 'nope'"):
        dag.stages(bad)
    ranked = params.model_copy(deep=True)
    ranked.distill.student.drop_least_important = 1
    student_base = next(s for s in dag.stages(ranked) if s.name == "student_base")
    assert student_base.args[student_base.args.index("--calibration") + 1] == "results/data/sft"
    assert "results/data/sft" in student_base.deps
    off = params.model_copy(deep=True)
    off.distill = None
    assert not any(s.name.startswith(("distill", "student")) for s in dag.stages(off))


def test_a_configured_student_must_share_the_tokenizer(tmp_path, tiny_base, params):
    local = params.model_copy(deep=True)
    local.distill.student.model = str(tiny_base)          # a local model folder as the student
    manifest = distill.student_base(local, tiny_base, tmp_path / "ok")
    assert manifest["source"]["kind"] == "local"
    other = tmp_path / "other"
    AutoModelForCausalLM.from_pretrained(tiny_base).save_pretrained(other)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    local.distill.student.model = str(other)
    with pytest.raises(ValueError, match="different tokenizer"):
        distill.student_base(local, tiny_base, tmp_path / "bad")


def test_the_least_important_layers_are_dropped(tmp_path, tiny_base, data, params):
    from posttrain.models.pruning import least_important_dropped

    assert least_important_dropped([5.0, 1.0, 3.0, 1.0], 2) == [0, 2]
    assert least_important_dropped([5.0, 1.0, 3.0, 2.0], 1) == [0, 2, 3]
    with pytest.raises(ValueError, match="cannot drop 4 of 4"):
        least_important_dropped([1.0] * 4, 4)
    local = params.model_copy(deep=True)
    local.distill.student.drop_least_important = 1
    with pytest.raises(ValueError, match="--calibration"):
        distill.student_base(local, tiny_base, tmp_path / "x")
    manifest = distill.student_base(local, tiny_base, tmp_path / "student", calibration_dir=data / "sft")
    measured = manifest["source"]["perplexity_without_layer"]
    assert len(measured) == 2 and manifest["source"]["layers_kept"] == [max(range(2), key=lambda i: measured[i])]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "student").config.num_hidden_layers == 1
    # the ranking takes each layer out in place: what a pruned copy of the model measures
    from posttrain.inference.generation import assistant_nll
    from posttrain.models.pruning import layer_importance

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)
    rows = [json.loads(line)["messages"] for line in open(data / "sft" / "val.jsonl")][:4]
    copies = [math.exp(nll / count) for nll, count in (assistant_nll(depth_pruned(model, [1 - i]), tokenizer, rows)
                                                       for i in range(2))]
    assert layer_importance(model, tokenizer, rows) == pytest.approx(copies, rel=1e-6)
    assert len(model.model.layers) == 2                        # every layer back in place
    # ranked on one subset's rows only: other numbers, and a subset with no rows is an error
    val_subsets = [json.loads(line)["subset"] for line in open(data / "sft" / "val.jsonl")]
    assert {"arithmetic", "sums"} <= set(val_subsets)
    local.distill.student.calibration_subsets = ["arithmetic"]
    ranked = distill.student_base(local, tiny_base, tmp_path / "ranked", calibration_dir=data / "sft")
    assert ranked["source"]["perplexity_without_layer"] != measured
    local.distill.student.calibration_subsets = ["nope"]
    with pytest.raises(ValueError, match="no validation rows of those subsets"):
        distill.student_base(local, tiny_base, tmp_path / "none", calibration_dir=data / "sft")


def test_a_student_pruned_from_the_teacher_keeps_the_teachers_weights(tmp_path, tiny_base, params):
    import shutil

    import torch

    teacher = tmp_path / "teacher"                      # a "trained" teacher: the base with one layer changed
    shutil.copytree(tiny_base, teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher)
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight += 1.0
    model.save_pretrained(teacher)
    local = params.model_copy(deep=True)
    local.distill.student.prune_from = "teacher"
    local.distill.student.layers = [1]
    with pytest.raises(ValueError, match="--teacher"):
        distill.student_base(local, tiny_base, tmp_path / "x")
    manifest = distill.student_base(local, tiny_base, tmp_path / "student", teacher_dir=teacher)
    assert manifest["source"]["from"] == str(teacher) and "teacher" in manifest["inputs"]
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert torch.equal(student.model.layers[0].self_attn.q_proj.weight, model.model.layers[1].self_attn.q_proj.weight)

    stage = next(s for s in dag.stages(local) if s.name == "student_base")
    teacher_dir = next(s for s in dag.stages(local) if s.name == "distill_samples").deps[0]
    assert stage.args[stage.args.index("--teacher") + 1] == teacher_dir and teacher_dir in stage.deps
