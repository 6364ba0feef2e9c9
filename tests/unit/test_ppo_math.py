"""PPO arithmetic against values worked out by hand (the comments show the working)."""

import math

import pytest
import torch

from posttrain.rl.ppo_math import (
    AdaptiveKL,
    FixedKL,
    explained_variance,
    gae,
    last_token_index,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def close(actual, expected, atol=1e-9):
    torch.testing.assert_close(actual.detach(), t(expected), rtol=0, atol=atol)


def test_token_rewards_put_the_score_on_the_last_response_token_and_penalise_kl():
    scores = t([1.0, 2.0])
    logprobs = t([[-1, -1, -1], [-2, -2, -9]])
    ref = t([[-1.5, -1, -0.5], [-2, -1, -1]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    rewards, kl = token_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    # row 0: kl = [0.5, 0, -0.5] -> -0.1 * kl = [-0.05, 0, 0.05]; score 1 on token 2
    # row 1: kl = [0, -1, (pad)] -> [0, 0.1, 0]; score 2 on token 1 (its last); padding stays 0
    close(rewards, [[-0.05, 0, 1.05], [0, 2.1, 0]])
    close(kl, [[0.5, 0, -0.5], [0, -1, 0]])
    assert last_token_index(t([[1, 1, 0, 0], [0, 0, 0, 0]])).tolist() == [1, -1]


def test_gae_by_hand_and_padding_does_not_leak():
    rewards = t([[0, 0, 1], [0, 2, 0]])
    values = t([[0.5, 0.6, 0.7], [1, 1, 5]])     # the 5 sits on padding: it must be ignored
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: d2 = 1 - 0.7 = 0.3; d1 = 0.9*0.7 - 0.6 = 0.03; d0 = 0.9*0.6 - 0.5 = 0.04
    #        A2 = 0.3; A1 = 0.03 + 0.45*0.3 = 0.165; A0 = 0.04 + 0.45*0.165 = 0.11425
    # row 1: d1 = 2 - 1 = 1; d0 = 0.9*1 - 1 = -0.1; A1 = 1; A0 = -0.1 + 0.45*1 = 0.35
    close(adv, [[0.11425, 0.165, 0.3], [0.35, 1.0, 0.0]])
    close(ret, [[0.61425, 0.765, 1.0], [1.35, 2.0, 0.0]])
    # gamma = lam = 1 with zero values: every token's advantage is the sum of rewards to go.
    adv, _ = gae(t([[1, 2, 3]]), t([[0, 0, 0]]), t([[1, 1, 1]]), gamma=1.0, lam=1.0)
    assert adv.tolist() == [[6, 5, 3]]


def test_clipped_policy_loss_by_hand_and_clipped_tokens_carry_no_gradient():
    old = t([[0, 0, 0]])
    logprobs = t([[math.log(1.5), math.log(0.5), math.log(1.1)]]).requires_grad_()
    adv = t([[1, -1, 2]])
    stats = policy_loss(logprobs, old, adv, t([[1, 1, 1]]), clip_range=0.2)
    # token 0: r = 1.5, A = 1:  max(-1.5, -1.2) = -1.2 (clipped)
    # token 1: r = 0.5, A = -1: max(0.5, 0.8) = 0.8   (clipped)
    # token 2: r = 1.1, A = 2:  max(-2.2, -2.2) = -2.2
    assert float(stats.loss.detach()) == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert stats.clip_fraction == pytest.approx(2 / 3)
    # k3: mean((r - 1) - log r)
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)]
    assert stats.approx_kl == pytest.approx(sum(k3) / 3)
    stats.loss.backward()
    # d/dlogp of -A r / 3 is -A r / 3 where unclipped; 0 where the clip is active
    close(logprobs.grad, [[0.0, 0.0, -2 * 1.1 / 3]])


def test_clipped_value_loss_by_hand():
    loss, frac = value_loss(t([[1.0, 0.0]]), t([[0.5, 0.5]]), t([[2.0, 0.4]]), t([[1, 1]]), clip_range=0.2)
    # token 0: (1 - 2)^2 = 1 vs (0.5 + 0.2 - 2)^2 = 1.69 -> 1.69 (clipped larger)
    # token 1: (0 - 0.4)^2 = 0.16 vs (0.5 - 0.2 - 0.4)^2 = 0.01 -> 0.16
    assert float(loss) == pytest.approx(0.5 * (1.69 + 0.16) / 2)
    assert frac == 0.5


def test_whitening_and_explained_variance_ignore_padding():
    out = masked_whiten(t([[1, 2, 3, 100]]), t([[1, 1, 1, 0]]))
    close(out, [[-math.sqrt(1.5), 0, math.sqrt(1.5), 0]], atol=1e-6)
    kept = masked_whiten(t([[1, 2, 3]]), t([[1, 1, 1]]), shift_mean=False)
    close(kept, [[2 - math.sqrt(1.5), 2, 2 + math.sqrt(1.5)]], atol=1e-6)
    returns = t([[1, 2, 3, 9]])
    assert explained_variance(returns, returns, t([[1, 1, 1, 0]])) == pytest.approx(1.0)
    assert explained_variance(t([[2, 2, 2, 2]]), returns, t([[1, 1, 1, 0]])) == pytest.approx(0.0)


def test_kl_controllers():
    fixed = FixedKL(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05
    kl = AdaptiveKL(0.1, target=6.0, horizon=10000)
    kl.update(12.0, 100)     # KL twice the target: error clipped to +0.2 -> 0.1 * (1 + 0.2 * 100/10000)
    assert kl.value == pytest.approx(0.1002)
    kl = AdaptiveKL(0.1, target=6.0, horizon=10000)
    kl.update(3.0, 100)      # half the target: error -0.5 clipped to -0.2
    assert kl.value == pytest.approx(0.0998)
    with pytest.raises(ValueError, match="target > 0"):
        AdaptiveKL(0.1, target=0.0, horizon=10)
