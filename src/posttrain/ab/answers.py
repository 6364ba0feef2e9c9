"""Both models' answers to the A/B prompts, made once (greedy, as the evaluation decodes) and
kept in the votes database, so a restarted server shows the same answers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from posttrain.ab.store import VoteStore

logger = logging.getLogger(__name__)


def read_prompts(path: Path, subset: str | None, limit: int) -> list[tuple[str, list[dict]]]:
    """(id, messages) from a JSONL file: our prepared prompts/eval rows, or any rows with a
    `prompt` (a string or messages) and optionally an `id`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prompts file (run the data stage, or pass --prompts FILE)")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if subset and row.get("subset") != subset:
            continue
        prompt = row.get("prompt")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not (isinstance(prompt, list) and prompt and prompt[-1].get("role") == "user"):
            raise ValueError(f"{path}:{number}: `prompt` must be a string or messages ending with a user turn")
        prompts.append((str(row.get("id", f"{path.name}:{number}")), prompt))
    if not prompts:
        raise ValueError(f"{path}: no prompts" + (f" in subset {subset!r}" if subset else ""))
    return prompts[:limit]


def load(folder: Path):
    """A model artifact (weights, or an adapter on its base merged in) for generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.models.artifacts import resolve_model

    weights, adapter, _ = resolve_model(folder)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.eval(), AutoTokenizer.from_pretrained(adapter or weights)


def ensure_answers(store: VoteStore, models: dict[str, Path], prompts: list[tuple[str, list[dict]]],
                   max_new_tokens: int) -> None:
    from posttrain.inference.generation import generate, generation_threads

    for name, folder in models.items():
        todo = [(pid, prompt) for pid, prompt in prompts if pid not in store.answered(name)]
        if not todo:
            continue
        logger.info("answering %d prompts with %s (%s)", len(todo), name, folder)
        model, tokenizer = load(folder)
        with generation_threads():
            texts = generate(model, tokenizer, [p for _, p in todo], max_new_tokens=max_new_tokens,
                             progress=f"ab {name}")
        store.add_answers(name, [(pid, prompt, text) for (pid, prompt), text in zip(todo, texts)])
        del model
