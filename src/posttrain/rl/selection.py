"""Checkpoint selection: the policy scored on held-out prompts with the stage's rewards; the best
checkpoint, step 0 (the init model) included, becomes the stage's model."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from posttrain.core.manifest import write_json
from posttrain.inference.generation import sampling_weights
from posttrain.rl.reward_terms import combined
from posttrain.training import trainers as training

if TYPE_CHECKING:
    from posttrain.config import RlStageParams

log = logging.getLogger(__name__)


class Selection(TrainerCallback):
    """Scores the policy on held-out prompts (greedy, the stage's weighted rewards) at step 0 and
    at every checkpoint, and keeps a copy of the best adapter beside the checkpoints (the trainer
    deletes old checkpoints; the best must survive). Scores persist in the run directory, so a
    resumed run keeps the ones it made before."""

    def __init__(self, run_dir: Path, heldout: list[dict], funcs, weights, tokenizer, st: RlStageParams,
                 sampling_dtype=None):
        """`sampling_dtype`: the training precision's (the policy answers as its rollouts sample)."""
        self.run_dir, self.heldout, self.funcs, self.weights = run_dir, heldout, funcs, weights
        self.tokenizer, self.st, self.sampling_dtype = tokenizer, st, sampling_dtype
        self.path = run_dir / "selection.json"
        self.scores: dict[int, float] = {int(k): v for k, v in json.loads(self.path.read_text()).items()} \
            if self.path.is_file() else {}

    def score(self, model) -> float:
        from posttrain.inference.generation import generate

        was_training = model.training
        with sampling_weights(model, self.sampling_dtype):
            responses = generate(model, self.tokenizer, [r["prompt"] for r in self.heldout],
                                 max_new_tokens=self.st.max_completion_length, batch_size=16, seed=self.st.seed)
        if was_training:
            model.train()
        columns = {k: [r[k] for r in self.heldout] for k in ("answer", "expect", "constraint", "subset")}
        values = [v for v in combined(self.funcs, self.weights, [r["prompt"] for r in self.heldout], responses, columns)
                  if v is not None]
        return sum(values) / len(values) if values else float("nan")

    def score_if_missing(self, model, step: int) -> None:
        if step in self.scores:
            return
        self._record(step, self.score(model), model)

    def _record(self, step: int, value: float, model) -> None:
        best = max(self.scores.values(), default=-math.inf)
        self.scores[step] = value
        main = training.is_main_process()   # every process scores the same weights; one writes
        if value > best:
            model.save_pretrained(self.run_dir / "best", is_main_process=main)
            if main:
                (self.run_dir / "best" / "STEP").write_text(str(step))
        if not main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {str(k): v for k, v in sorted(self.scores.items())})
        log.info("held-out reward at step %d: %.4f (best %.4f)", step, value, max(self.scores.values()))

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step not in self.scores:
            self._record(state.global_step, self.score(model), model)
        return control

    def best(self) -> tuple[int, Path]:
        step = int((self.run_dir / "best" / "STEP").read_text())
        return step, self.run_dir / "best"
