"""PPO for language models with a reward model and a critic (TRL no longer ships a PPO trainer).

One step: sample `prompts_per_step` prompts x `num_generations` completions from the policy (a
LoRA adapter, merged for sampling); score them with the stage's rewards (reward models and rule
functions); compute per-token log-probabilities under the policy and under the reference (the
same weights with the adapter switched off: no second copy), and the critic's per-token values
(posttrain.rl.ppo_critic: a second adapter on the same weights, or a reward-model copy).
Rewards are the score at the last response token minus the KL penalty at every token; GAE turns
them into whitened advantages and returns (posttrain.rl.ppo_math). Then `ppo.epochs` passes over
`ppo.mini_batches` shuffled mini-batches update policy and critic with the clipped losses. The KL
coefficient is fixed (`beta`) or adapts toward `ppo.kl_target`.

The trainer offers the part of transformers' Trainer that the RL stage uses (`model`, `state`,
`train(resume_from_checkpoint=)`, `_load_from_checkpoint`), and saves `checkpoint-N/` folders
(policy adapter, critic adapter, optimizer, trainer_state.json) marked complete last, so resume
and model selection work as for every other trainer.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from pathlib import Path

import torch

from posttrain.core import checkpoints, preemption, tracking
from posttrain.core.progress import Progress
from posttrain.inference.generation import sampling_weights, stop_ids
from posttrain.rl import ppo_math
from posttrain.rl.ppo_critic import position_ids
from posttrain.training import trainers as training

log = logging.getLogger(__name__)


def token_logprobs(model, ids, mask, prompt_width: int, temperature: float):
    """Log-probabilities of the response tokens (ids[:, prompt_width:]) and the full log-softmax,
    under the sampling temperature."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    logp_all = torch.log_softmax(logits[:, prompt_width - 1:-1].float() / temperature, dim=-1)
    return logp_all.gather(-1, ids[:, prompt_width:, None]).squeeze(-1), logp_all


def response_mask(new_tokens: torch.Tensor, stops: list[int]) -> torch.Tensor:
    """1 on each response's tokens through its first stop token, 0 after it."""
    is_stop = torch.isin(new_tokens, torch.tensor(stops, device=new_tokens.device))
    after_stop = (is_stop.cumsum(-1) - is_stop.long()) > 0
    return (~after_stop).long()


class PpoTrainer:
    def __init__(self, policy, critic, tokenizer, prompts: list[dict], reward_fn, run_dir: Path, st, cfg,
                 precision: dict | None = None, on_save=None):
        """`critic`: a posttrain.rl.ppo_critic critic (a reward-model copy, or an adapter on the policy).
        `precision`: posttrain.training.trainers.resolve_precision's (None: fp32 throughout)."""
        from transformers import TrainerState

        self.model, self.critic, self.tokenizer = policy, critic, tokenizer
        self.prompts, self.reward_fn, self.run_dir, self.st, self.cfg = prompts, reward_fn, Path(run_dir), st, cfg
        self.ppo = st.ppo
        self.on_save = on_save
        self.precision = precision or training.resolve_precision("fp32")
        self.kl = (ppo_math.AdaptiveKL(st.beta, st.ppo.kl_target, st.ppo.kl_horizon) if st.ppo.kl_target
                   else ppo_math.FixedKL(st.beta))
        critic_params = {id(p) for p in critic.parameters()}    # a shared critic's adapter lives in the policy
        params = [{"params": [p for p in policy.parameters() if p.requires_grad and id(p) not in critic_params],
                   "lr": st.learning_rate},
                  {"params": critic.parameters(),
                   "lr": st.ppo.critic_learning_rate or st.learning_rate}]
        self.optimizer = torch.optim.AdamW(params, weight_decay=cfg.weight_decay)
        self.state = TrainerState(max_steps=st.max_steps, global_step=0, log_history=[])
        self.stops = stop_ids(tokenizer)

    # --- the loop ------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | None = None):
        preemption.install()
        if resume_from_checkpoint:
            self._restore(Path(resume_from_checkpoint), optimizer=True)
        steps = range(self.state.global_step + 1, self.st.max_steps + 1)
        progress = Progress(f"PPO {self.st.name}", self.st.max_steps, start=self.state.global_step)
        for step in steps:
            stats = self.step(step)
            self.state.global_step = step
            self.state.log_history.append({**stats, "step": step})
            tracking.log(stats, step)
            progress.set(step)
            log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))
            if step % self.st.save_steps == 0 or step == self.st.max_steps or preemption.requested():
                self._save(step)
            if preemption.requested():
                break   # train_or_restore ends the process; the rerun resumes from this step
        return None

    def step(self, step: int) -> dict:
        """One rollout and its PPO updates; returns the step's statistics."""
        rows = random.Random(f"{self.st.seed}-{step}").sample(self.prompts, min(self.st.prompts_per_step,
                                                                                  len(self.prompts)))
        rows = [r for r in rows for _ in range(self.st.num_generations)]
        with training.autocast(self.precision):
            roll = self._rollout(rows, step)
            return self._update(roll, step)

    def _update(self, roll: dict, step: int) -> dict:
        """The PPO epochs over one rollout's mini-batches; the step's statistics."""
        n = roll["ids"].shape[0]
        gen = torch.Generator().manual_seed(self.st.seed * 100_003 + step)
        size = math.ceil(n / self.ppo.mini_batches)
        totals = {"loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "value_clip_fraction": 0.0}
        updates = 0
        self.model.train()
        self.critic.train()
        trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        for _ in range(self.ppo.epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, size):
                i = order[start:start + size]
                logp, _ = token_logprobs(self.model, roll["ids"][i], roll["mask"][i], roll["width"],
                                         self.st.temperature)
                values = self.critic.values(roll["ids"][i], roll["mask"][i], roll["width"])
                pl = ppo_math.policy_loss(logp, roll["logprobs"][i], roll["advantages"][i], roll["rmask"][i],
                                          self.ppo.clip_range)
                vl, vclip = ppo_math.value_loss(values, roll["values"][i], roll["returns"][i], roll["rmask"][i],
                                                self.ppo.value_clip_range)
                loss = pl.loss + self.ppo.vf_coef * vl
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"PPO loss is {float(loss)} at step {step}; stopping without saving. "
                                             f"Lower the learning rate or check the rewards.")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, self.cfg.max_grad_norm)
                self.optimizer.step()
                for key, value in (("loss", float(loss.detach())), ("value_loss", float(vl.detach())),
                                   ("clip_fraction", pl.clip_fraction), ("approx_kl", pl.approx_kl),
                                   ("value_clip_fraction", vclip)):
                    totals[key] += value
                updates += 1
        kl_per_sequence = float(roll["kl"].sum(-1)[roll["scored"]].mean()) if roll["scored"].any() else 0.0
        coef = self.kl.value
        self.kl.update(kl_per_sequence, n)
        scores = roll["scores"][roll["scored"]]
        return {**{k: v / updates for k, v in totals.items()},
                "reward": float(scores.mean()) if len(scores) else float("nan"),
                "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
                "kl": kl_per_sequence, "kl_coef": coef,
                "completions/mean_length": float(roll["rmask"].sum(-1).float().mean()),
                "entropy": roll["entropy"], "explained_variance": roll["explained_variance"],
                "unscored": int((~roll["scored"]).sum()), "learning_rate": self.st.learning_rate}

    @torch.no_grad()
    def _rollout(self, rows: list[dict], step: int) -> dict:
        tok, model = self.tokenizer, self.model
        side, tok.padding_side = tok.padding_side, "left"
        try:
            texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        finally:
            tok.padding_side = side
        model.eval()
        torch.manual_seed(self.st.seed * 100_003 + step)
        with sampling_weights(model, self.precision["sampling_dtype"]):
            out = model.generate(**enc, do_sample=True, temperature=self.st.temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=self.st.max_completion_length, eos_token_id=self.stops,
                                 pad_token_id=tok.pad_token_id)
        width = enc["input_ids"].shape[1]
        rmask = response_mask(out[:, width:], self.stops)
        completions = [t.strip() for t in tok.batch_decode(out[:, width:] * rmask + tok.pad_token_id * (1 - rmask),
                                                           skip_special_tokens=True)]
        columns = {k: [r.get(k) for r in rows] for k in ("answer", "expect", "constraint", "subset")}
        raw = self.reward_fn([r["prompt"] for r in rows], [[{"role": "assistant", "content": c}] for c in completions],
                             columns)
        scored = torch.tensor([s is not None for s in raw], device=out.device)
        scores = torch.tensor([s if s is not None else 0.0 for s in raw], dtype=torch.float32, device=out.device)
        rmask = rmask * scored[:, None].long()          # an unscored completion teaches nothing
        mask = torch.cat([enc["attention_mask"], rmask], dim=1)
        # Scored in chunks of one mini-batch: the full-vocabulary log-softmax of a whole rollout
        # (sequences x tokens x vocabulary, fp32) would not fit on a GPU at production sizes.
        self.critic.eval()
        size = math.ceil(out.shape[0] / self.ppo.mini_batches)
        logprobs, ref_logprobs, values, entropy_sum = [], [], [], 0.0
        for start in range(0, out.shape[0], size):
            ids, m, rm = out[start:start + size], mask[start:start + size], rmask[start:start + size]
            lp, logp_all = token_logprobs(model, ids, m, width, self.st.temperature)
            entropy_sum += float((-(logp_all.exp() * logp_all).sum(-1) * rm).sum())
            del logp_all
            with model.disable_adapter():
                ref_logprobs.append(token_logprobs(model, ids, m, width, self.st.temperature)[0])
            logprobs.append(lp)
            values.append(self.critic.values(ids, m, width))
        logprobs, ref_logprobs, values = torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values)
        entropy = entropy_sum / max(float(rmask.sum()), 1.0)
        rewards, kl = ppo_math.token_rewards(scores, logprobs, ref_logprobs, rmask.float(), self.kl.value)
        advantages, returns = ppo_math.gae(rewards, values, rmask.float(), self.ppo.gamma, self.ppo.lam)
        return {"ids": out, "mask": mask, "rmask": rmask.float(), "width": width, "logprobs": logprobs,
                "values": values * rmask, "advantages": ppo_math.masked_whiten(advantages, rmask.float()),
                "returns": returns, "kl": kl, "scores": scores, "scored": scored, "entropy": entropy,
                "explained_variance": ppo_math.explained_variance(values, returns, rmask.float())}

    # --- checkpoints ---------------------------------------------------------------------------

    def _save(self, step: int) -> None:
        ckpt = self.run_dir / f"checkpoint-{step}"
        if ckpt.exists():
            shutil.rmtree(ckpt)
        self.model.save_pretrained(ckpt, selected_adapters=["default"])   # the policy alone
        self.critic.save(ckpt / "critic")
        torch.save(self.optimizer.state_dict(), ckpt / "optimizer.pt")
        self.state.save_to_json(str(ckpt / "trainer_state.json"))
        (ckpt / "ppo_state.json").write_text(json.dumps({"kl_coef": self.kl.value}))
        checkpoints.mark_complete(ckpt, step)
        if self.on_save is not None:
            self.on_save(self.state, self.model)
        kept = sorted((int(d.name.split("-")[1]), d) for d in self.run_dir.glob("checkpoint-*") if d.is_dir())
        for _, old in kept[:-self.cfg.save_total_limit] if self.cfg.save_total_limit else []:
            shutil.rmtree(old, ignore_errors=True)

    def _restore(self, ckpt: Path, optimizer: bool) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import TrainerState

        set_peft_model_state_dict(self.model, load_file(ckpt / "adapter_model.safetensors"))
        self.critic.load(ckpt / "critic")
        if optimizer:
            self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        self.state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))
        self.kl.value = json.loads((ckpt / "ppo_state.json").read_text())["kl_coef"]
        log.info("resumed PPO from %s (step %d)", ckpt, self.state.global_step)

    def _load_from_checkpoint(self, path: str) -> None:
        self._restore(Path(path), optimizer=False)
