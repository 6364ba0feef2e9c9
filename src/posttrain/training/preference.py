"""Preference optimisation with TRL: the pairs as each trainer reads them, the trainer of each
algorithm, and the held-out measure every algorithm is judged by.

DPO and SimPO/ORPO optimise different quantities (a log-ratio to a reference, a length-normalised
log-probability, an odds ratio), so their own training metrics do not compare. What does is the
policy's preference on held-out pairs: the summed log-probability of the chosen response minus
the rejected one's, before and after training, by the same code. Its change per pair is the
log-ratio to the init model of the chosen response minus the rejected one's: DPO's implicit reward
margin (over beta), measured the same way for all four; the share of pairs it moved towards the
chosen response is DPO's reward accuracy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from posttrain.models.reward_model import encode, padded_batches
from posttrain.training import trainers as training

log = logging.getLogger(__name__)

# What each algorithm logs, by our log.csv column (TRL's names: eval_ prefix on held-out values).
LOG_COLUMNS = {
    "train_loss": "loss", "val_loss": "eval_loss", "learning_rate": "learning_rate",
    "train_margin": "rewards/margins", "val_margin": "eval_rewards/margins",
    "train_accuracy": "rewards/accuracies", "val_accuracy": "eval_rewards/accuracies",
}


def read_pairs(path: Path, subsets: list[str], tokenizer, max_length: int) -> tuple[list[dict], list[dict], int]:
    """The rows of `subsets` in a prepared preference file, in TRL's conversational format: the
    pairs (prompt messages, chosen and rejected assistant messages), the unpaired ratings (prompt,
    completion, label), and how many were left out for being longer than `max_length` tokens
    (truncating a pair can flip which side is better)."""
    pairs, ratings, over = [], [], 0
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("subset") not in subsets:
                continue
            sides = ("completion",) if "completion" in row else ("chosen", "rejected")
            if max(len(encode(tokenizer, row["prompt"], row[side])) for side in sides) > max_length:
                over += 1
                continue
            (ratings if "completion" in row else pairs).append({k: row[k] for k in ("prompt", *sides, "label")
                                                                 if k in row})
    return pairs, ratings, over


def unpaired(rows: list[dict]) -> list[dict]:
    """KTO's examples: each pair's chosen response as desirable and its rejected one as
    undesirable; an unpaired rating as it is."""
    return [r if "completion" in r else {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r in rows for side in (("completion",) if "completion" in r else ("chosen", "rejected"))]


def build_trainer(model, tokenizer, train: list[dict], val: list[dict], run_dir: Path, cfg, st, precision: dict):
    """The TRL trainer of `st.algorithm`, with a LoRA adapter on `model` (method lora). DPO and KTO
    get no reference model: TRL then computes the reference with the adapter switched off, the
    init model itself, so memory holds one copy of the weights."""
    from datasets import Dataset

    args = {**training.trainer_kwargs(cfg, precision, run_dir), "max_steps": st.max_steps,
            "learning_rate": st.learning_rate, "seed": st.seed, "data_seed": st.seed}
    peft = (training.lora_config(model, cfg.lora_for(st), "CAUSAL_LM", "preference")
            if cfg.method != "full" else None)
    common = dict(model=model, processing_class=tokenizer, callbacks=training.callbacks(cfg), peft_config=peft)
    if st.algorithm == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(**args, beta=st.beta, loss_type=[st.loss_type], label_smoothing=st.label_smoothing)
        return DPOTrainer(args=config, train_dataset=Dataset.from_list(train), eval_dataset=Dataset.from_list(val),
                          **common)
    if st.algorithm == "kto":
        from trl import KTOConfig, KTOTrainer

        config = KTOConfig(**args, beta=st.beta, desirable_weight=st.desirable_weight,
                           undesirable_weight=st.undesirable_weight)
        return KTOTrainer(args=config, train_dataset=Dataset.from_list(unpaired(train)),
                          eval_dataset=Dataset.from_list(unpaired(val)), **common)
    if st.algorithm == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        config = ORPOConfig(**args, beta=st.beta)
        return ORPOTrainer(args=config, train_dataset=Dataset.from_list(train), eval_dataset=Dataset.from_list(val),
                           **common)
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    # SimPO is CPO's loss with the SFT term off (cpo_alpha 0): TRL's home for it
    config = CPOConfig(**args, beta=st.beta, loss_type="simpo", simpo_gamma=st.simpo_gamma, cpo_alpha=0.0)
    return CPOTrainer(args=config, train_dataset=Dataset.from_list(train), eval_dataset=Dataset.from_list(val),
                      **common)


@torch.no_grad()
def logp_margins(model, tokenizer, pairs: list[dict], batch_size: int = 8) -> list[float]:
    """Per pair: log p(chosen | prompt) - log p(rejected | prompt) under `model`, summed over the
    response tokens (greedy-free: one forward pass per sequence)."""
    sequences, starts = [], []
    for p in pairs:
        prompt = tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        for side in ("chosen", "rejected"):
            full = encode(tokenizer, p["prompt"], p[side])
            if full[:len(prompt)] != prompt:
                raise ValueError("the chat template renders the prompt differently once a response follows it; "
                                 "response log-probabilities need the prompt's tokens as a prefix")
            sequences.append(full)
            starts.append(len(prompt))
    totals = [0.0] * len(sequences)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for idx, ids, mask in padded_batches(sequences, tokenizer.pad_token_id, batch_size * 2):
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        token_logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
        for row, i in enumerate(idx):
            totals[i] = token_logps[row, starts[i] - 1:len(sequences[i]) - 1].sum().item()
    model.train(was_training)
    return [totals[2 * k] - totals[2 * k + 1] for k in range(len(pairs))]


def margin_summary(before: list[float], after: list[float]) -> dict:
    """The held-out margins before and after training, and what training moved. The absolute
    margin favours the shorter response of a pair (fewer tokens, fewer log-probabilities summed);
    its change does not: per pair it is the log-ratio to the init model of the chosen response
    minus the rejected one's, DPO's implicit reward margin over beta, for every algorithm."""
    n = len(before)
    gains = [a - b for a, b in zip(after, before)]
    return {"heldout_logp_margin_start": sum(before) / n, "heldout_logp_margin": sum(after) / n,
            "heldout_pair_accuracy_start": sum(m > 0 for m in before) / n,
            "heldout_pair_accuracy": sum(m > 0 for m in after) / n,
            "heldout_margin_gain": sum(gains) / n, "heldout_pairs_moved_to_chosen": sum(g > 0 for g in gains) / n}
