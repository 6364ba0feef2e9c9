"""The arithmetic of PPO for language models, on padded [batch, tokens] tensors with a 0/1 mask of
the response tokens. Kept apart from the trainer so each piece is tested against hand-computed
values.

A rollout's reward is per token: the KL penalty to the reference policy at every response token
(`kl_coef * (log pi - log pi_ref)` subtracted), plus the sequence's score (reward model and rule
rewards) at its last response token. GAE turns rewards and the critic's values into advantages and
returns; the clipped surrogate and the clipped value loss then train the policy and the critic
over several epochs of mini-batches on the same rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries; with shift_mean=False the mean is added back
    (rewards keep their sign, only their scale is normalised)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of `mask` (responses are left-aligned: 1...1 0...0)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (log pi - log pi_ref) at each response token, plus the
    sequence score at its last response token. Returns (rewards, per-token KL estimate)."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = last_token_index(mask)
    rows = torch.arange(mask.shape[0], device=mask.device)
    has_response = last >= 0
    rewards[rows[has_response], last[has_response]] += scores[has_response].to(rewards.dtype)
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation backwards over each response:
    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last response token is 0),
    A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages, returns = A + V)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * m
        # Padding after a response must not leak into it: past the end, carry zeros.
        next_value = torch.where(m.bool(), values[:, t], torch.zeros_like(next_value))
        next_adv = torch.where(m.bool(), adv, torch.zeros_like(next_adv))
    return advantages, (advantages + values) * mask


@dataclass
class PolicyLossStats:
    loss: torch.Tensor
    clip_fraction: float
    approx_kl: float


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float) -> PolicyLossStats:
    """Clipped surrogate: mean over response tokens of max(-A r, -A clip(r, 1-eps, 1+eps)), with
    r = exp(log pi - log pi_old). Also the fraction of tokens where the clip was active and the
    approximate KL to the rollout policy, mean(((r - 1) - log r)) (Schulman's k3 estimator)."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = float(masked_mean((clipped > unclipped).float(), mask))
        approx_kl = float(masked_mean((ratio - 1) - log_ratio, mask))
    return PolicyLossStats(loss, clip_fraction, approx_kl)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float) -> tuple[torch.Tensor, float]:
    """Clipped value loss: 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)).
    Returns (loss, fraction of tokens where the clipped term was larger)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    a, b = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(a, b), mask)
    return loss, float(masked_mean((b > a).float(), mask))


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over response tokens: 1 is a perfect critic, 0 a constant one."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)) ** 2, mask)
    return float(1 - var_d / var_r) if var_r > 0 else float("nan")


class FixedKL:
    """A constant KL coefficient."""

    def __init__(self, coef: float):
        self.value = coef

    def update(self, observed_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKL:
    """Ziegler et al. (2019): move the coefficient so the observed KL tracks `target`, by at most
    20 % per `horizon` samples: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""

    def __init__(self, coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0 (got {target}, {horizon})")
        self.value, self.target, self.horizon = coef, target, horizon

    def update(self, observed_kl: float, n_steps: int) -> None:
        error = max(-0.2, min(0.2, observed_kl / self.target - 1))
        self.value *= 1 + error * n_steps / self.horizon
