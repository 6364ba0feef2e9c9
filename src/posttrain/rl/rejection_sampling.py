"""Rejection sampling: a model answers prompts several times, verifiers score every answer, and
the ones that reach a minimum reward become training rows (R1's SFT data; expert iteration /
rejection-sampling fine-tuning, RFT). The distillation samples (posttrain.stages.distill) and
the `rejection_sampling` RL algorithm (posttrain.stages.rl) both draw their rows here."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Sampled:
    accepted: list[dict] = field(default_factory=list)   # {"id", "subset", "messages", "source_id", "reward"}
    rejected: list[dict] = field(default_factory=list)   # the same record with "reason", "prompt", "response"
    counts: dict[str, Counter] = field(default_factory=dict)  # per subset: samples, verdicts, prompts

    def __add__(self, other: Sampled) -> Sampled:
        counts = {s: self.counts.get(s, Counter()) + other.counts.get(s, Counter())
                  for s in {*self.counts, *other.counts}}
        return Sampled(self.accepted + other.accepted, self.rejected + other.rejected, counts)

    def report(self) -> dict:
        samples = len(self.accepted) + len(self.rejected)
        totals = sum(self.counts.values(), Counter())
        return {"subsets": {s: dict(sorted(c.items())) for s, c in sorted(self.counts.items())},
                "samples": samples, "accepted": len(self.accepted), "rejected": len(self.rejected),
                "acceptance_rate": len(self.accepted) / samples if samples else 0.0,
                "prompts": totals["prompts"], "prompts_with_an_answer": totals["prompts_with_an_answer"]}

    def write(self, out: Path) -> dict:
        """train.jsonl (accepted, `messages`), rejected.jsonl and the report; returns the report."""
        out.mkdir(parents=True, exist_ok=True)
        for name, items in (("train.jsonl", self.accepted), ("rejected.jsonl", self.rejected)):
            with open(out / name, "w") as fh:
                for item in items:
                    fh.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
        return self.report()


def summary(report: dict) -> str:
    """One line for the log: how many answers and prompts passed."""
    return (f"rejection sampling: {report['accepted']} of {report['samples']} answers accepted "
            f"({report['prompts_with_an_answer']} of {report['prompts']} prompts)")


def sample(model, tokenizer, rows: list[dict], verify, *, per_prompt: int, keep_per_prompt: int, min_reward: float,
           temperature: float, max_new_tokens: int, batch_size: int, seed: int, progress: str | None) -> Sampled:
    """`model` answers each of `rows` (posttrain.stages.rl.prompt_rows records) `per_prompt` times;
    `verify(prompts, completions, **columns)` scores the answers; at most `keep_per_prompt`
    distinct answers per prompt that reach `min_reward` are accepted, the rest are rejected with
    the reason."""
    from posttrain.inference.generation import generate

    repeated = [r for r in rows for _ in range(per_prompt)]
    answers = generate(model, tokenizer, [r["prompt"] for r in repeated], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, temperature=temperature, seed=seed, progress=progress)
    columns = {k: [r[k] for r in repeated] for k in ("answer", "expect", "constraint", "subset")}
    scores = verify([r["prompt"] for r in repeated], answers, **columns)

    result = Sampled()
    kept: dict[int, list[str]] = {}
    for i, (row, answer, score) in enumerate(zip(repeated, answers, scores)):
        c = result.counts.setdefault(row["subset"], Counter())
        c["samples"] += 1
        p = i // per_prompt
        verdict = ("unverifiable" if score is None else "empty" if not answer.strip()
                   else "below_min_reward" if score < min_reward
                   else "duplicate" if answer in kept.get(p, [])
                   else "over_keep_per_prompt" if len(kept.get(p, [])) >= keep_per_prompt else "accepted")
        c[verdict] += 1
        record = {"source_id": row["id"], "subset": row["subset"], "reward": score}
        if verdict == "accepted":
            kept.setdefault(p, []).append(answer)
            result.accepted.append({"id": f"{row['id']}-{len(kept[p]) - 1}", "subset": row["subset"],
                                    "messages": [*row["prompt"], {"role": "assistant", "content": answer}], **record})
        else:
            result.rejected.append({**record, "reason": verdict, "prompt": row["prompt"][-1]["content"],
                                    "response": answer})
    for p in kept:
        result.counts[rows[p]["subset"]]["prompts_with_an_answer"] += 1
    for row in rows:
        result.counts.setdefault(row["subset"], Counter())["prompts"] += 1
    return result
