"""What the training stages share: precision by device, per-step logs as DVC plots, curves, and
throughput."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from transformers import TrainerCallback


def resolve_precision(precision: str) -> dict:
    """TrainingArguments flags for `precision` (auto: bf16 on a capable GPU, fp32 elsewhere)."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and not cuda:
        raise ValueError(f"precision: {precision} needs a CUDA GPU; use auto or fp32 on CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "name": precision}


def torch_dtype(precision_name: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision_name, torch.float32)


def write_log_csv(log_history: list[dict], path: Path, columns: dict[str, str]) -> list[dict]:
    """One row per logged step with the given {csv column: trainer log key}; a DVC plot."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        row = rows.setdefault(step, {"step": step})
        for col, key in columns.items():
            if key in entry:
                row[col] = entry[key]
    ordered = [rows[s] for s in sorted(rows)]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", *columns])
        w.writeheader()
        for r in ordered:
            w.writerow({k: r.get(k, "") for k in ["step", *columns]})
    return ordered


def plot_curves(rows: list[dict], path: Path, title: str, panels: list[list[str]]) -> None:
    """A PNG with one panel per group of columns (e.g. [[train_loss, val_loss], [learning_rate]])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, cols in zip(axes[0], panels):
        for col in cols:
            pts = [(r["step"], r[col]) for r in rows if r.get(col) not in (None, "")]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, label=col)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class StopOnNonFinite(TrainerCallback):
    """A NaN or infinite loss stops training before it is checkpointed or promoted."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss"):
            value = (logs or {}).get(key)
            if value is not None and not torch.isfinite(torch.tensor(float(value))):
                raise FloatingPointError(f"{key} is {value} at step {state.global_step}; stopping without saving. "
                                         f"Lower the learning rate or check the data.")
        return control
