import json
import subprocess

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, TINY_OVERLAY, bin_path, posttrain_in_two_processes
from conftest import sft_overrides as _sft_overrides
from conftest import write_overlay as _overlay
from posttrain.config import load_params
from posttrain.core import checkpoints
from posttrain.inference.dtype import cpu_has_bf16
from posttrain.stages import base_model, sft


def _params(tmp_path, *overlays):
    return load_params([ROOT / "params.yaml", TINY_OVERLAY,
                        *[_overlay(tmp_path, f"o{i}", o) for i, o in enumerate(overlays)]])


def test_lora_sft_outputs_load_and_agree(tmp_path, tiny_base, sft_data):
    out = tmp_path / "sft"
    manifest = sft.main(_params(tmp_path, _sft_overrides(tmp_path)), tiny_base, sft_data, out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 8 and m["method"] == "lora"
    # precision: auto (bf16 on a GPU, bf16 mixed precision on a CPU with bfloat16 instructions)
    assert m["precision"] == ("bf16" if torch.cuda.is_available() or cpu_has_bf16() else "fp32")
    assert m["val_loss_last"] < m["val_loss_first"]          # it learned
    assert 0 < m["trainable_params"] < m["total_params"]
    assert m["tokens_seen"] > 0 and "tokens_per_second" not in m      # wall clock: in the run record
    assert json.loads((out / "run.json").read_text())["tokens_per_second"] > 0
    base_manifest = json.loads((tiny_base / "manifest.json").read_text())
    assert manifest["chat_template_sha256"] == base_manifest["chat_template_sha256"]
    rows = read_jsonl_csv(out / "log.csv")
    assert [r["step"] for r in rows if r["val_loss"]] == ["0", "4", "8"]   # step-0 validation loss too
    assert (out / "curves.png").stat().st_size > 10_000
    assert "validation loss" in (out / "README.md").read_text()

    tok = AutoTokenizer.from_pretrained(out / "merged")
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_base).chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 3 plus 4?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert torch.cuda.is_available() or merged.dtype == torch.float32   # a CPU's mixed precision keeps float32 weights
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), out / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    with torch.no_grad():
        a, b, c = merged(ids).logits, adapted(ids).logits, base(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-3)


def read_jsonl_csv(path):
    import csv

    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_moe_adapters_on_experts_and_attention_not_router(tmp_path, sft_data):
    base = tmp_path / "moe_base"
    base_model.main(_params(tmp_path, {"model": {"base": "tiny:qwen3_moe"}}), base)
    out = tmp_path / "sft"
    cfg = _sft_overrides(tmp_path, max_steps=4, router_aux_loss_coef=0.01,
                         lora={"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"],
                               "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]})
    sft.main(_params(tmp_path, cfg), base, sft_data, out)
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_cfg["target_parameters"]) == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    from safetensors import safe_open

    with safe_open(out / "adapter" / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any("mlp.experts" in k for k in keys)
    assert any("self_attn.q_proj" in k for k in keys)
    assert not any(".mlp.gate." in k for k in keys)      # router untouched
    # the router's weights in merged/ are exactly the base's
    from safetensors.torch import load_file

    merged_w, base_w = load_file(out / "merged" / "model.safetensors"), load_file(base / "model.safetensors")
    routers = [k for k in base_w if k.endswith("mlp.gate.weight")]
    assert routers and all(torch.equal(merged_w[k], base_w[k]) for k in routers)
    experts = [k for k in base_w if "mlp.experts" in k]
    assert any(not torch.equal(merged_w[k], base_w[k]) for k in experts)


def test_full_finetune_writes_merged_only(tmp_path, tiny_base, sft_data):
    out = tmp_path / "sft"
    sft.main(_params(tmp_path, _sft_overrides(tmp_path, method="full", max_steps=2, learning_rate=1e-3)),
             tiny_base, sft_data, out)
    assert (out / "merged" / "model.safetensors").is_file() and not (out / "adapter").exists()
    m = json.loads((out / "metrics.json").read_text())
    assert m["trainable_params"] == m["total_params"]


def test_bf16_is_mixed_precision_on_a_cpu_and_bf16_weights_on_a_gpu():
    from posttrain.training import trainers as training

    bf16 = training.resolve_precision("bf16", cuda=False)
    assert bf16["bf16"] and bf16["dtype"] == torch.float32 and bf16["sampling_dtype"] == torch.bfloat16
    with training.autocast(bf16):
        assert torch.is_autocast_enabled("cpu")
    fp32 = training.resolve_precision("fp32", cuda=False)
    assert not fp32["bf16"] and fp32["sampling_dtype"] is None
    with training.autocast(fp32):
        assert not torch.is_autocast_enabled("cpu")
    assert training.resolve_precision("auto", cuda=False)["name"] == ("bf16" if cpu_has_bf16() else "fp32")
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        training.resolve_precision("fp16", cuda=False)
    on_gpu = training.resolve_precision("bf16", cuda=True)   # the weights themselves in bfloat16, no autocast
    assert on_gpu["dtype"] == torch.bfloat16 and on_gpu["sampling_dtype"] is None
    with training.autocast(on_gpu):
        assert not torch.is_autocast_enabled("cpu")


def test_clear_errors_for_qlora_on_cpu_and_template_without_markers(tmp_path, tiny_base, sft_data):
    with pytest.raises(ValueError, match="qlora .* needs a CUDA GPU"):
        sft.main(_params(tmp_path, _sft_overrides(tmp_path, method="qlora")), tiny_base, sft_data, tmp_path / "o")
    plain = tmp_path / "plain"
    template = str(_plain_template(tmp_path))
    base_model.main(_params(tmp_path, {"model": {"base": str(tiny_base), "chat_template": template}}), plain)
    with pytest.raises(ValueError, match="generation %} markers"):
        sft.main(_params(tmp_path, _sft_overrides(tmp_path)), plain, sft_data, tmp_path / "o")
    with pytest.raises(ValueError, match="match no parameter"):
        sft.main(_params(tmp_path, _sft_overrides(tmp_path, lora={"target_parameters": ["mlp.experts.gate_up_proj"]})),
                 tiny_base, sft_data, tmp_path / "o")


def _plain_template(tmp_path):
    path = tmp_path / "plain.jinja"
    path.write_text("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    return path


def test_early_stopping_ends_a_run_that_stops_improving(tmp_path, tiny_base, sft_data):
    out = tmp_path / "sft"
    cfg = _sft_overrides(tmp_path, max_steps=30, eval_steps=1, save_steps=1, learning_rate=1e-12,
                         early_stopping_patience=2)
    sft.main(_params(tmp_path, cfg), tiny_base, sft_data, out)
    assert json.loads((out / "metrics.json").read_text())["steps"] < 30


def test_sigusr1_saves_a_checkpoint_and_exits_75_then_the_rerun_resumes(tmp_path, tiny_base, sft_data,
                                                                           stop_signal):
    """What SLURM's `--signal=USR1@N` does before a time limit: the stage finishes its step,
    saves a complete checkpoint, writes no outputs and exits with code 75; the rerun resumes."""
    from posttrain.core import preemption

    params = _params(tmp_path, _sft_overrides(tmp_path))
    stop_signal()    # arrives before the first step ends
    with pytest.raises(preemption.Preempted) as stopped:
        sft.main(params, tiny_base, sft_data, tmp_path / "out")
    preemption.reset()
    assert stopped.value.code == preemption.EXIT_CODE == 75 and stopped.value.step == 1
    (run_dir,) = (tmp_path / "ckpt").glob("sft-*")
    assert checkpoints.latest_complete(run_dir).name == "checkpoint-1"
    assert not (tmp_path / "out").exists()
    sft.main(params, tiny_base, sft_data, tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 1 and metrics["steps"] == 8


def test_ranks_stop_at_the_same_step_when_one_of_them_got_the_signal(tmp_path):
    """Under a multi-process launch the signal may reach the ranks at different steps; they agree
    (all-reduce) so that all save the same step: two real processes on gloo."""
    script = tmp_path / "ranks.py"
    script.write_text("import torch.distributed as dist\n"
                      "from posttrain.core import preemption\n"
                      "dist.init_process_group('gloo')\n"
                      "if dist.get_rank() == 1:\n"
                      "    preemption._requested.append('SIGUSR1')\n"
                      "stops = preemption._agreed('cpu')\n"
                      f"open(f'{tmp_path}/rank{{dist.get_rank()}}.txt', 'w').write(str(stops))\n"
                      "dist.destroy_process_group()\n")
    res = subprocess.run([bin_path("torchrun"), "--standalone", "--nproc_per_node", "2", str(script)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["True", "True"]


def test_two_processes_train_together_and_one_writes_the_outputs(tmp_path, tiny_base, sft_data):
    """A multi-GPU launch: both processes train and save the weights together (sharded weights
    need every process), the main one writes the outputs (when both wrote them, one could remove
    or overwrite what the other was writing)."""
    _params(tmp_path, _sft_overrides(tmp_path))      # writes the overlay o0.yaml
    out = tmp_path / "sft"
    posttrain_in_two_processes("sft", "--base", tiny_base, "--data", sft_data, "--out", out,
                               params=[ROOT / "params.yaml", TINY_OVERLAY, tmp_path / "o0.yaml"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 8 and m["val_loss_last"] < m["val_loss_first"]
    assert json.loads((out / "manifest.json").read_text())["stage"] == "sft"
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert torch.cuda.is_available() or merged.dtype == torch.float32   # a CPU's mixed precision keeps float32 weights
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), out / "adapter")
    name, weight = next((n, p) for n, p in merged.named_parameters() if "q_proj" in n)
    assert torch.allclose(weight, adapted.merge_and_unload().get_parameter(name), atol=1e-6)
