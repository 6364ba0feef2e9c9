"""A run whose loss is not finite stops at once and promotes nothing: no outputs, and no
complete checkpoint for a rerun to resume from."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, TINY_OVERLAY, sft_overrides, write_overlay
from posttrain.config import load_params
from posttrain.core import checkpoints
from posttrain.stages import sft


def test_a_nan_loss_stops_sft_and_nothing_is_promoted(tmp_path, tiny_base, sft_data):
    """One NaN in the base model's weights (a corrupted download, an overflow upstream)."""
    poisoned = tmp_path / "base"
    shutil.copytree(tiny_base, poisoned)
    weights = load_file(poisoned / "model.safetensors")
    key = next(k for k in weights if k.endswith("layers.0.mlp.down_proj.weight"))
    weights[key][0, 0] = float("nan")
    save_file(weights, poisoned / "model.safetensors", metadata={"format": "pt"})
    cfg = sft_overrides(tmp_path, max_steps=8, save_steps=1, eval_steps=8)
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY, write_overlay(tmp_path, "nan", cfg)])
    with pytest.raises(FloatingPointError, match=r"loss is nan at step [01]; stopping without saving"):
        sft.main(params, poisoned, sft_data, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    run_dirs = list((tmp_path / "ckpt").glob("sft-*"))
    assert not [c for d in run_dirs for c in d.glob(f"checkpoint-*/{checkpoints.COMPLETE}")]
    assert torch.isnan(load_file(poisoned / "model.safetensors")[key][0, 0])     # the input is left as it was
