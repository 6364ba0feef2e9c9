"""Logit-level distillation: the student matches the teacher's next-token distributions on the
training sequences, beside the usual cross-entropy on the labels.

The divergence is GKD's generalised Jensen-Shannon (TRL's `GKDTrainer.generalized_jsd_loss`;
beta 0 is the forward KL of classic knowledge distillation), computed on the tokens the labels
keep (assistant turns). It is added to the SFT trainer rather than using GKDTrainer, so packing,
assistant-only masks and checkpointing stay those of the SFT stage; GKD's on-policy sampling is
not used (sequence-level distillation samples the teacher instead, posttrain.stages.distill).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# the model inputs the teacher sees: the student's batch minus the labels (packed batches carry
# position_ids instead of an attention mask)
_TEACHER_INPUTS = ("input_ids", "attention_mask", "position_ids")


class Teacher:
    def __init__(self, folder: Path, *, weight: float, beta: float, temperature: float, device=None):
        from transformers import AutoModelForCausalLM

        from posttrain.models.sources import weights_dir

        self.folder = Path(folder)
        self.model = AutoModelForCausalLM.from_pretrained(weights_dir(self.folder))
        self.model.requires_grad_(False)
        self.model.eval()
        if device is not None:
            self.model.to(device)
        self.weight, self.beta, self.temperature = weight, beta, temperature

    def check_vocabulary(self, student) -> None:
        """Distributions are compared token by token: both models must share one vocabulary."""
        ours, theirs = self.model.config.get_text_config().vocab_size, student.config.get_text_config().vocab_size
        if ours != theirs:
            raise ValueError(f"teacher {self.folder} has a vocabulary of {ours} tokens and the student {theirs}; "
                             f"logit-level distillation needs one shared tokenizer (use distill.level: sequence)")

    def divergence(self, student_logits, inputs) -> torch.Tensor:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDTrainer

        with torch.no_grad():
            teacher = self.model(**{k: inputs[k] for k in _TEACHER_INPUTS if k in inputs}, use_cache=False).logits
        # Logits at position i predict token i+1. Only the positions whose next token the labels
        # keep (assistant turns; not prompts or padding) enter the divergence, so they are picked
        # before the vocabulary-wide softmaxes rather than masked after them: the same sum over the
        # same rows, without the softmaxes of the rest (a small share of a step on the demo, one core;
        # figures in benchmarks/RESULTS.md, "The demo under 20 minutes").
        kept = inputs["labels"][:, 1:] != -100
        student, teacher = student_logits[:, :-1][kept].float(), teacher[:, :-1][kept].float()
        return GKDTrainer.generalized_jsd_loss(student[None], teacher[None], beta=self.beta,
                                               temperature=self.temperature,
                                               num_items_in_batch=kept.sum().clamp_min(1))

    def trainer_class(self, base):
        """`base` (the SFT trainer class) with the loss `weight * divergence + (1 - weight) * CE`
        while training; evaluation reports plain cross-entropy, comparable across students."""

        class DistillationTrainer(base):
            def __init__(self, *args, teacher: Teacher, **kwargs):
                super().__init__(*args, **kwargs)
                self.teacher = teacher
                teacher.check_vocabulary(self.model)
                teacher.model.to(self.args.device)
                self._parts: dict[str, list[float]] = {"kd_loss": [], "ce_loss": []}

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                ce, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                   num_items_in_batch=num_items_in_batch)
                if not model.training:
                    return (ce, outputs) if return_outputs else ce
                kd = self.teacher.divergence(outputs.logits, inputs)
                if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                    # the CE is then a share of the whole accumulated batch, not a micro-batch mean
                    kd = kd / self.args.gradient_accumulation_steps
                self._parts["kd_loss"].append(float(kd.detach()))
                self._parts["ce_loss"].append(float(ce.detach()))
                loss = self.teacher.weight * kd + (1 - self.teacher.weight) * ce
                return (loss, outputs) if return_outputs else loss

            def log(self, logs: dict, *args, **kwargs):
                if "loss" in logs:  # a training log: add the two parts, averaged since the last one
                    for key, values in self._parts.items():
                        if values:
                            # Six significant digits: the divergence is a float32 sum over the
                            # vocabulary whose last digits follow the reduction's thread count
                            # (Snakemake runs this stage on half the cores, `dvc repro` on all;
                            # the weights come out the same), and the log must too.
                            logs[key] = float(f"{sum(values) / len(values):.6g}")
                            values.clear()
                super().log(logs, *args, **kwargs)

        return DistillationTrainer
