"""Reward models: how a conversation is encoded for one, how it is scored, and how a trained one
is loaded with the statistics RL normalises its scores with.

    rm = RewardModel.load(Path("results/reward/helpful"))
    rm.score([[{"role": "user", "content": "Hi"}]], ["Hello! How can I help?"])   # normalised

Training (`posttrain reward`) and every consumer (evaluation, GRPO, PPO, rejection sampling) go
through `encode`, so a score means the same thing everywhere: the chat template applied to the
prompt plus the response, read at the last non-padding token.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.core.manifest import require_manifest
from posttrain.models.sources import weights_dir

log = logging.getLogger(__name__)


def encode(tokenizer, prompt: list[dict], response: str | list[dict], context_turns: int | None = None) -> list[int]:
    """Token ids of `prompt` followed by the assistant `response`, with the chat template (as
    TRL's RewardTrainer tokenizes a conversational pair). With `context_turns`, only the last
    that many messages of `prompt` are kept, after its system message if it has one."""
    if isinstance(response, str):
        response = [{"role": "assistant", "content": response}]
    if context_turns is not None:
        system = [m for m in prompt[:1] if m["role"] == "system"]
        prompt = system + prompt[len(system):][-context_turns:]
    return tokenizer.apply_chat_template(prompt + response, tokenize=True, return_dict=True)["input_ids"]


def padded_batches(sequences: list, pad_token_id: int, batch_size: int):
    """(indices, ids, mask) of right-padded batches, the sequences sorted by length so that a
    batch wastes little compute on padding."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
            mask[row, :len(sequences[i])] = 1
        yield idx, ids, mask


@torch.no_grad()
def score_ids(model, pad_token_id: int, sequences: list[list[int]], batch_size: int = 16) -> list[float]:
    """Raw reward per token sequence, in batches of similar length (`padded_batches`); results
    come back in the input order."""
    model.eval()
    out = [0.0] * len(sequences)
    device = next(model.parameters()).device
    for idx, ids, mask in padded_batches(sequences, pad_token_id, batch_size):
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(idx):
            out[i] = float(logits[row, 0])
    return out


@dataclass
class RewardModel:
    """A trained reward model with its normalisation (mean/std of its scores on training data)."""

    model: object
    tokenizer: object
    mean: float = 0.0
    std: float = 1.0
    aspect: str = ""
    context_turns: int | None = None

    @classmethod
    def load(cls, folder: Path, device: str | None = None, dtype: str = "auto") -> RewardModel:
        """`device`: where the model goes (`cuda`, `cpu`, ...); `auto` spreads its layers over the
        visible GPUs (accelerate's device map), as a 30B reward model beside a PPO policy needs.
        Unset: `default_device()`. `dtype`: `float32` or `bfloat16` (scoring only; the LoRA
        adapter keeps float32), `auto` the stored dtype."""
        device = device or default_device()
        model, tokenizer, metrics = load_model(folder, device_map="auto" if device == "auto" else None, dtype=dtype)
        if device and device != "auto":
            model.to(device)
        return cls(model=model, tokenizer=tokenizer, mean=metrics["train_reward_mean"],
                   std=metrics["train_reward_std"] or 1.0, aspect=metrics.get("aspect", Path(folder).name),
                   context_turns=metrics.get("context_turns"))

    def raw(self, prompts: list[list[dict]], responses: list[str | list[dict]], batch_size: int = 16) -> list[float]:
        seqs = [encode(self.tokenizer, p, r, self.context_turns) for p, r in zip(prompts, responses)]
        return score_ids(self.model, self.tokenizer.pad_token_id, seqs, batch_size)

    def score(self, prompts: list[list[dict]], responses: list[str | list[dict]], batch_size: int = 16) -> list[float]:
        """Scores normalised to the training distribution: 0 is an average training response,
        1 is one standard deviation better."""
        return [(r - self.mean) / self.std for r in self.raw(prompts, responses, batch_size)]


def default_device() -> str | None:
    """Where a reward model goes unless told: this process's GPU under a multi-process launch
    (each rank scores its own batches), spread over the visible GPUs in a single process, the
    CPU (None) without a GPU."""
    import os

    import torch

    if not torch.cuda.is_available():
        return None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "auto"


def load_model(folder: Path, trainable: bool = False, device_map: str | None = None, dtype: str = "auto"):
    """(sequence-classification model, tokenizer, metrics) of the reward model in `folder`;
    `trainable` keeps its LoRA and score head trainable (a PPO critic starts from it)."""
    placement = {"device_map": device_map} if device_map else {}
    if dtype != "auto":
        placement["dtype"] = getattr(torch, dtype)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    manifest = require_manifest(folder, "reward")
    metrics = json.loads((folder / "metrics.json").read_text())
    if (folder / "adapter").is_dir():
        from peft import PeftModel

        init = weights_dir(Path(manifest["inputs"]["init"]["path"]))
        require_manifest(init.parent if init.name == "merged" else init, "the reward model's init model")
        model = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1, **placement)
        model = PeftModel.from_pretrained(model, folder / "adapter", is_trainable=trainable)
        tokenizer = AutoTokenizer.from_pretrained(folder / "adapter")
    else:
        if trainable:
            raise ValueError(f"{folder} is a fully fine-tuned reward model; a PPO critic starts from a LoRA reward "
                             f"model (reward.method: lora)")
        model = AutoModelForSequenceClassification.from_pretrained(folder / "model", num_labels=1, **placement)
        tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, metrics
