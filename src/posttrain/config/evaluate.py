"""`evaluate:` how every model of the DAG is scored."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from posttrain.config.base import Section


class EvaluateParams(Section):
    """Evaluation of one model (`evaluate_<model>`): lm-eval tasks on the eval split, safety, perplexity,
    reward-model scores and the win rate against a reference model."""
    max_new_tokens: int = Field(96, ge=1, description=(
        "Greedy decoding, so reruns give identical numbers on CPU. Arithmetic worked solutions are ~40 tokens; 96 "
        "leaves room without letting a rambling model dominate the run time."))
    think_end_token: str | None = Field(None, description=(
        "The end of a reasoning block (`</think>` for Qwen3's template): the harness scores only what follows its "
        "last occurrence, as lm-eval's `think_end_token` does for reasoning models (an answer cut off inside the "
        "block is scored whole). Give thinking models a max_new_tokens that fits the reasoning. null: the whole "
        "answer is scored."))
    safety_max_new_tokens: int = Field(48, ge=1, description=(
        "Refusals show in the first sentence; safety prompts need fewer tokens."))
    batch_size: int = Field(8, ge=1, description="Prompts the model answers at once (generation and lm-eval).")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "The dtype models and reward models are evaluated in. auto: the stored dtype on a GPU; on a CPU bfloat16 "
        "where it multiplies bfloat16 natively (AVX512-BF16, AMX), float32 elsewhere. The evaluation records the "
        "dtype it used: compare figures measured in the same one."))
    limit: int | None = Field(None, ge=1, description=(
        "Rows per task; a limited run is marked `partial` in its metrics and in the report. null: every row."))
    harness_tasks: list[str] = Field(default_factory=list, description=(
        "Standard lm-eval tasks by name (e.g. gsm8k, ifeval): production only, their data needs the hub."))
    perplexity_rows: int = Field(100, ge=0, description=(
        "Held-out SFT rows scored for perplexity (0 turns it off)."))
    reward_batch_size: int = Field(16, ge=1, description=(
        "Responses a reward model scores at once. Batches are sorted by length and padded to their longest row, so "
        "smaller batches pad less: on the demo, 16 at once scores faster than 64 "
        "(benchmarks/reward_batching.py; figures in benchmarks/RESULTS.md)."))
    rm_subsets: dict[str, list[str]] = Field(default_factory=lambda: {
        "helpful": ["format", "benign"], "safety": ["harmful", "benign"]}, description=(
        "Which responses each reward model scores (`<aspect>_rm_score`, the mean normalised score): eval subsets by "
        "aspect. An aspect not listed scores every non-arithmetic response."))
    reference: str = Field("sft", description=(
        "win_rate_vs_reference: the model whose responses every model's responses are compared with."))
    win_rate_aspect: str = Field("helpful", description=(
        "win_rate_vs_reference: how often this aspect's reward model prefers a model's response to the reference "
        "model's response to the same prompt (ties count half)."))
    seed: int = Field(0, description="Seeds lm-eval (its bootstrap error estimates) and generation.")
