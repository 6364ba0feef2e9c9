"""GPTQ calibration on a CPU in bfloat16 against float32, side by side in one run.

    .venv-export/bin/python benchmarks/gptq_calibration.py --model results/export/sft/merged \\
        --calibration results/data/sft [--rows 64]

GPTQModel loads a model in bfloat16 on a CPU by default. Without bf16 matrix units (AVX512-BF16,
AMX) a bfloat16 matrix product is emulated, and GPTQ's calibration is mostly products: every
layer's forward over the calibration rows, once per group of modules. `posttrain export-gptq`
therefore calibrates in float32 on a CPU and stores the unquantized weights back in the merged
dtype. This quantizes the same merged model on the same rows (export.gptq's settings) both ways
and prints, for each: the seconds of `quantize()`, GPTQ's mean and max reconstruction loss, and
the time ratio. Also a single 1024 x 576 x 1536 product in each dtype, the kernel behind it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def product_ms(dtype, repeats: int = 20) -> float:
    import torch

    x, w = torch.randn(1024, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
    torch.nn.functional.linear(x, w)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, w)
    return (time.perf_counter() - started) / repeats * 1000


def quantize(model_dir: Path, rows: list[dict], dtype, q) -> dict:
    from gptqmodel import GPTQModel, QuantizeConfig

    from posttrain.stages.export.quantize import _layer_losses

    qconfig = QuantizeConfig(bits=q.bits, group_size=q.group_size, desc_act=q.desc_act, sym=q.sym,
                             damp_percent=q.damp_percent, offload_to_disk=False)
    with tempfile.TemporaryDirectory() as tmp:
        model = GPTQModel.load(str(model_dir), qconfig, dtype=dtype)
        started = time.perf_counter()
        model.quantize(rows, batch_size=q.batch_size)
        seconds = time.perf_counter() - started
        model.save(tmp)
        losses = _layer_losses(Path(tmp) / "quant_log.csv")
    return {"seconds": seconds, "loss_mean": losses["quant_loss_mean"], "loss_max": losses["quant_loss_max"]}


def main() -> None:
    import os

    # as `posttrain export-gptq` does: GPTQModel packs one layer per CPU worker, read at import
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, len(os.sched_getaffinity(0)))))
    import torch
    from transformers import AutoTokenizer

    from posttrain.config import load_params
    from posttrain.stages.export import calibration_rows

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("results/export/sft/merged"))
    ap.add_argument("--calibration", type=Path, default=Path("results/data/sft"))
    ap.add_argument("--params", nargs="*", default=[str(ROOT / "params.yaml")])
    ap.add_argument("--rows", type=int, help="calibration rows (default: export.gptq.calibration_rows)")
    args = ap.parse_args()
    q = load_params(args.params).export.gptq
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rows = calibration_rows(tokenizer, args.calibration, q.calibration_subsets, args.rows or q.calibration_rows,
                            q.calibration_max_length)
    print(f"{len(rows)} calibration rows, {sum(len(r['input_ids']) for r in rows)} tokens, "
          f"{torch.get_num_threads()} threads")
    results = {}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        results[name] = {"product_ms": product_ms(dtype), **quantize(args.model, rows, dtype, q)}
        r = results[name]
        print(f"{name:9s} product {r['product_ms']:6.1f} ms  quantize {r['seconds']:6.1f} s  "
              f"loss mean {r['loss_mean']:.5f} max {r['loss_max']:.3f}")
    bf, f32 = results["bfloat16"], results["float32"]
    print(f"bfloat16 / float32: product {bf['product_ms'] / f32['product_ms']:.2f}x, "
          f"quantize {bf['seconds'] / f32['seconds']:.2f}x")


if __name__ == "__main__":
    main()
