"""Sampling helpers shared by the demo corpus's file builders: quotas per row kind, distinct draws,
and draws spread evenly over groups. They raise _TooSmall when a template space cannot give the
requested number of distinct rows; generate_demo_corpus turns that into a CorpusSizeError."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence


class CorpusSizeError(ValueError):
    """A requested size is larger than the distinct prompts a file's templates can produce."""


class _TooSmall(Exception):
    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.capacity = capacity


def _quotas(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Split n rows by fractions (largest remainder), so the counts always sum to n."""
    raw = {k: n * f / sum(fractions.values()) for k, f in fractions.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (out[k] - raw[k], list(raw).index(k)))[: n - sum(out.values())]:
        out[k] += 1
    return out


def _max_rows(fractions: dict[str, float], capacities: dict[str, int]) -> int:
    n = min(int(capacities[k] / f) + len(fractions) for k, f in fractions.items() if f > 0)
    while n > 0 and any(q > capacities[k] for k, q in _quotas(n, fractions).items()):
        n -= 1
    return n


def _check_quotas(n: int, fractions: dict[str, float], capacities: dict[str, int]) -> dict[str, int]:
    quotas = _quotas(n, fractions)
    if any(q > capacities[k] for k, q in quotas.items()):
        raise _TooSmall(_max_rows(fractions, capacities))
    return quotas


def _draw_distinct(rng: random.Random, n: int, draw: Callable[[random.Random], tuple[Hashable, object]],
                   capacity: int, accept: Callable[[object], bool] | None = None) -> list:
    """n items with distinct keys from `draw`; capacity bounds how many distinct keys exist."""
    if n > capacity:
        raise _TooSmall(capacity)
    seen: set = set()
    out: list = []
    attempts, limit = 0, 1000 + 100 * n
    while len(out) < n:
        attempts += 1
        if attempts > limit:
            raise _TooSmall(len(out))
        key, item = draw(rng)
        if key in seen:
            continue
        seen.add(key)
        if accept is None or accept(item):
            out.append(item)
    return out


def _sample(rng: random.Random, pool: Sequence, n: int) -> list:
    if n > len(pool):
        raise _TooSmall(len(pool))
    return rng.sample(list(pool), n)


def _spread(rng: random.Random, pairs: Sequence[tuple[object, Hashable]], n: int) -> list[tuple[object, Hashable, int]]:
    """n distinct (item, group) pairs spread evenly over the groups, each with its occurrence
    index within its group: the k-th round takes one unused item from every group, so no group
    (a harmful intent, a benign request, a constraint type) repeats before all others have
    appeared as often."""
    if n > len(pairs):
        raise _TooSmall(len(pairs))
    groups: dict[Hashable, list] = {}
    for item, group in pairs:
        groups.setdefault(group, []).append(item)
    order = list(groups)
    rng.shuffle(order)
    for items in groups.values():
        rng.shuffle(items)
    out: list[tuple[object, Hashable, int]] = []
    k = 0
    while len(out) < n:
        for g in order:
            if k < len(groups[g]) and len(out) < n:
                out.append((groups[g][k], g, k))
        k += 1
    return out
