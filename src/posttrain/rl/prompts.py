"""Prepared prompt rows as the records reward functions score (RL stages, rejection sampling,
the distillation teacher's sampling)."""

from __future__ import annotations

import json
from pathlib import Path


def prompt_rows(path: Path, subsets: list[str], system_prompt: str | None = None) -> list[dict]:
    """Prompt rows of `subsets` as reward-function records: the prompt (its system turn replaced
    by `system_prompt` when given) and the columns reward functions read (answer, expect,
    constraint as JSON text, subset). RL stages and rejection sampling read prompts this way."""
    rows = []
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("subset") not in subsets:
                continue
            meta = row.get("meta") or {}
            prompt = [m for m in row["prompt"] if m["role"] != "system"] if system_prompt else list(row["prompt"])
            if system_prompt:
                prompt = [{"role": "system", "content": system_prompt}, *prompt]
            constraint = meta.get("constraint")
            rows.append({"prompt": prompt, "answer": row.get("answer"), "expect": meta.get("expect"),
                         "constraint": json.dumps(constraint, sort_keys=True) if constraint else None,
                         "subset": row["subset"], "id": row.get("id")})
    return rows
