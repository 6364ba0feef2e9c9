"""A stage's reward: registry functions with weights, guarded so that a broken one stops the stage
before anything is promoted."""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)


class RewardFunctionError(RuntimeError):
    """A reward function failed; the stage stops without promoting a checkpoint."""


def reward_spec(term, reward_dirs: dict[str, Path], scoring_dtype: str = "auto") -> dict:
    """What posttrain.verifiers.rewards.build takes for a stage's reward term; a reward model
    scores in `scoring_dtype`."""
    spec = term.model_dump(exclude={"weight", "aspect"}, exclude_none=True)
    if term.name == "reward_model":
        spec["dtype"] = scoring_dtype
        if term.aspect not in reward_dirs:
            raise ValueError(f"a reward term uses the {term.aspect!r} reward model, but none was given "
                             f"(--reward {term.aspect}=results/reward/{term.aspect}); given: {sorted(reward_dirs)}")
        spec["path"] = str(reward_dirs[term.aspect])
    return spec


def guarded(fn, none_batches: Counter):
    """`fn` that stops the run with a clear message when it raises or returns NaN/inf, and counts
    the batches it cannot score at all."""
    name = fn.__name__

    def wrapped(prompts, completions, **columns):
        try:
            values = fn(prompts, completions, **columns)
        except Exception as err:
            raise RewardFunctionError(f"reward function {name!r} raised {type(err).__name__}: {err}; "
                                      f"the stage stops and promotes no checkpoint") from err
        bad = [v for v in values if v is not None and not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"reward function {name!r} returned {bad[0]}; the stage stops and promotes "
                                     f"no checkpoint")
        if values and all(v is None for v in values):
            none_batches[name] += 1
            log.warning("reward function %s could not score any completion of this batch (%d so far)", name,
                        none_batches[name])
        return values

    wrapped.__name__ = name
    return wrapped


def combined(funcs, weights: list[float], prompts, completions, columns: dict) -> list[float | None]:
    totals: list[float | None] = [None] * len(completions)
    for w, fn in zip(weights, funcs):
        for i, v in enumerate(fn(prompts, completions, **columns)):
            if v is not None:
                totals[i] = (totals[i] or 0.0) + w * v
    return totals
