"""PPO/GRPO math against plain-Python implementations written here from the formulas."""

from __future__ import annotations

import math
import random

import mlx.core as mx
import numpy as np
import pytest

from engine.algorithms.grpo import group_advantages, grpo_token_loss, k3_kl, reduce_loss
from engine.algorithms.ppo import (
    AdaptiveKLController,
    gae,
    kl_per_token,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    token_rewards,
)
from engine.algorithms.reward import bradley_terry_loss
from engine.rewards import sorted_letters_score


def rand_batch(seed: int, n: int = 4, t: int = 7) -> tuple[list[list[float]], list[list[float]], list[int]]:
    rng = random.Random(seed)
    lengths = [rng.randint(1, t) for _ in range(n)]
    rewards = [[rng.uniform(-1, 1) if j < lengths[i] else 0.0 for j in range(t)] for i in range(n)]
    values = [[rng.uniform(-1, 1) if j < lengths[i] else 0.0 for j in range(t)] for i in range(n)]
    return rewards, values, lengths


def mask_of(lengths: list[int], t: int) -> list[list[float]]:
    return [[1.0 if j < n else 0.0 for j in range(t)] for n in lengths]


def close(a: mx.array, b: list, tol: float = 1e-5) -> bool:
    return bool(np.allclose(np.array(a.tolist()), np.array(b), atol=tol, rtol=tol))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_a_backward_loop_over_each_episode(gamma: float, lam: float) -> None:
    rewards, values, lengths = rand_batch(1)
    t = len(rewards[0])
    expected_adv, expected_ret = [], []
    for r, v, n in zip(rewards, values, lengths, strict=True):
        adv = [0.0] * t
        running = 0.0
        for j in range(n - 1, -1, -1):  # the episode ends after its last real token
            nxt = v[j + 1] if j + 1 < n else 0.0
            delta = r[j] + gamma * nxt - v[j]
            running = delta + gamma * lam * running
            adv[j] = running
        expected_adv.append(adv)
        expected_ret.append([adv[j] + (v[j] if j < n else 0.0) for j in range(t)])
    mask = mx.array(mask_of(lengths, t))
    adv, ret = gae(mx.array(rewards), mx.array(values), mask, gamma, lam)
    assert close(adv * mask, expected_adv)
    assert close(ret * mask, expected_ret)


def test_gae_with_lambda_one_and_gamma_one_is_reward_to_go_minus_value() -> None:
    rewards, values, lengths = rand_batch(2)
    t = len(rewards[0])
    mask = mx.array(mask_of(lengths, t))
    adv, _ = gae(mx.array(rewards), mx.array(values), mask, 1.0, 1.0)
    for i, n in enumerate(lengths):
        for j in range(n):
            assert adv[i, j].item() == pytest.approx(sum(rewards[i][j:n]) - values[i][j], abs=1e-5)


def test_whitening_uses_only_real_tokens_and_bessel_variance() -> None:
    rewards, _, lengths = rand_batch(3)
    t = len(rewards[0])
    real = [rewards[i][j] for i, n in enumerate(lengths) for j in range(n)]
    mean = sum(real) / len(real)
    var = sum((x - mean) ** 2 for x in real) / (len(real) - 1)
    out = masked_whiten(mx.array(rewards), mx.array(mask_of(lengths, t)))
    for i, n in enumerate(lengths):
        for j in range(n):
            assert out[i, j].item() == pytest.approx((rewards[i][j] - mean) / math.sqrt(var + 1e-8), abs=1e-4)
    whitened = [out[i, j].item() for i, n in enumerate(lengths) for j in range(n)]
    assert sum(whitened) / len(whitened) == pytest.approx(0.0, abs=1e-5)


def test_kl_estimators() -> None:
    logp = [[-1.0, -2.0, -0.5]]
    ref = [[-1.5, -1.0, -0.5]]
    k1 = kl_per_token(mx.array(logp), mx.array(ref), "k1")
    k3 = kl_per_token(mx.array(logp), mx.array(ref), "k3")
    exp_k1 = [a - b for a, b in zip(logp[0], ref[0], strict=True)]
    exp_k3 = [math.exp(b - a) - 1 - (b - a) for a, b in zip(logp[0], ref[0], strict=True)]
    assert close(k1, [exp_k1])
    assert close(k3, [exp_k3])
    assert min(exp_k1) < 0  # k1 can go negative on a token ...
    assert all(v >= 0 for v in k3[0].tolist())  # ... k3 never does
    assert close(k3_kl(mx.array(logp), mx.array(ref)), [exp_k3])


def test_token_rewards_put_the_score_on_the_last_real_token() -> None:
    lengths = [3, 1, 5]
    t = 5
    kl = [[0.1 * (i + j) for j in range(t)] for i in range(3)]
    scores = [1.0, -2.0, 0.5]
    rewards, non_score = token_rewards(mx.array(scores), mx.array(kl), mx.array(mask_of(lengths, t)), 0.2)
    for i, n in enumerate(lengths):
        for j in range(t):
            want = (-0.2 * kl[i][j] if j < n else 0.0) + (scores[i] if j == n - 1 else 0.0)
            assert rewards[i, j].item() == pytest.approx(want, abs=1e-6)
    assert non_score.sum().item() == pytest.approx(sum(-0.2 * kl[i][j] for i, n in enumerate(lengths) for j in range(n)), abs=1e-5)


def test_clipped_policy_loss_against_elementwise_formula() -> None:
    rng = random.Random(4)
    n, t = 3, 4
    lengths = [4, 2, 3]
    logp = [[rng.uniform(-3, 0) for _ in range(t)] for _ in range(n)]
    old = [[x + rng.uniform(-0.5, 0.5) for x in row] for row in logp]
    adv = [[rng.uniform(-2, 2) for _ in range(t)] for _ in range(n)]
    c = 0.2
    terms, clipped, ratios = [], [], []
    for i in range(n):
        for j in range(lengths[i]):
            r = math.exp(logp[i][j] - old[i][j])
            a = adv[i][j]
            l1, l2 = -a * r, -a * min(max(r, 1 - c), 1 + c)
            terms.append(max(l1, l2))
            clipped.append(1.0 if l2 > l1 else 0.0)
            ratios.append(r)
    loss, stats = ppo_policy_loss(mx.array(logp), mx.array(old), mx.array(adv), mx.array(mask_of(lengths, t)), c)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    assert stats["policy/clipfrac_avg"].item() == pytest.approx(sum(clipped) / len(clipped), abs=1e-6)
    assert stats["val/ratio"].item() == pytest.approx(sum(ratios) / len(ratios), abs=1e-5)


def test_clipped_value_loss_against_elementwise_formula() -> None:
    rng = random.Random(5)
    n, t = 3, 4
    lengths = [1, 4, 3]
    v = [[rng.uniform(-2, 2) for _ in range(t)] for _ in range(n)]
    old = [[rng.uniform(-2, 2) for _ in range(t)] for _ in range(n)]
    ret = [[rng.uniform(-2, 2) for _ in range(t)] for _ in range(n)]
    c = 0.2
    terms, frac = [], []
    for i in range(n):
        for j in range(lengths[i]):
            vc = old[i][j] + min(max(v[i][j] - old[i][j], -c), c)
            a, b = (v[i][j] - ret[i][j]) ** 2, (vc - ret[i][j]) ** 2
            terms.append(max(a, b))
            frac.append(1.0 if b > a else 0.0)
    loss, clipfrac = ppo_value_loss(mx.array(v), mx.array(old), mx.array(ret), mx.array(mask_of(lengths, t)), c)
    assert loss.item() == pytest.approx(0.5 * sum(terms) / len(terms), abs=1e-5)
    assert clipfrac.item() == pytest.approx(sum(frac) / len(frac), abs=1e-6)


def test_adaptive_kl_controller_follows_ziegler_update() -> None:
    ctl = AdaptiveKLController(0.05, target=6.0, horizon=10000)
    coef = 0.05
    for kl in [1.0, 12.0, 6.0, 100.0, 0.0, 7.0]:
        err = min(max(kl / 6.0 - 1, -0.2), 0.2)
        coef *= 1 + err * 64 / 10000
        assert ctl.update(kl, 64) == pytest.approx(coef, rel=1e-12)
    # a KL above target raises the coefficient, below target lowers it
    assert AdaptiveKLController(1.0, 6.0, 100).update(20.0, 10) > 1.0
    assert AdaptiveKLController(1.0, 6.0, 100).update(1.0, 10) < 1.0


def test_group_advantages_normalise_within_each_group() -> None:
    rewards = [1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2, 3.0, 1.0, 2.0, 0.0]
    g = 4
    adv, std = group_advantages(mx.array(rewards), g, scale=True)
    for k in range(0, len(rewards), g):
        grp = rewards[k : k + g]
        mean = sum(grp) / g
        s = math.sqrt(sum((x - mean) ** 2 for x in grp) / (g - 1))
        assert std[k // g].item() == pytest.approx(s, abs=1e-5)
        for j, x in enumerate(grp):
            assert adv[k + j].item() == pytest.approx((x - mean) / (s + 1e-4), abs=1e-4)
    unscaled, _ = group_advantages(mx.array(rewards), g, scale=False)
    assert unscaled[0].item() == pytest.approx(1.0 - 0.5, abs=1e-6)
    assert all(abs(a) < 1e-6 for a in adv[4:8].tolist())  # a group with equal rewards teaches nothing


def test_grpo_loss_reductions() -> None:
    rng = random.Random(6)
    n, t = 3, 5
    lengths = [5, 2, 3]
    logp = [[rng.uniform(-3, 0) for _ in range(t)] for _ in range(n)]
    old = [[x + rng.uniform(-0.4, 0.4) for x in row] for row in logp]
    adv = [rng.uniform(-1, 1) for _ in range(n)]
    lo, hi = 0.2, 0.28
    per = [[0.0] * t for _ in range(n)]
    for i in range(n):
        for j in range(t):
            r = math.exp(logp[i][j] - old[i][j])
            per[i][j] = -min(r * adv[i], min(max(r, 1 - lo), 1 + hi) * adv[i])
    tok, _ = grpo_token_loss(mx.array(logp), mx.array(old), mx.array(adv), lo, hi)
    mask = mx.array(mask_of(lengths, t))
    real = [[per[i][j] for j in range(lengths[i])] for i in range(n)]
    total = sum(sum(r) for r in real)
    assert reduce_loss(tok, mask, "grpo", 8).item() == pytest.approx(sum(sum(r) / len(r) for r in real) / n, abs=1e-5)
    assert reduce_loss(tok, mask, "bnpo", 8).item() == pytest.approx(total / sum(lengths), abs=1e-5)
    assert reduce_loss(tok, mask, "dr_grpo", 8).item() == pytest.approx(total / (n * 8), abs=1e-5)
    assert reduce_loss(tok, mask, "dapo", 8, global_tokens=20.0).item() == pytest.approx(total / 20.0, abs=1e-5)


def test_bradley_terry_loss_with_margin_and_centering() -> None:
    c, r = [1.0, 0.2, -0.5], [0.0, 0.4, -1.0]
    margin, center = 0.3, 0.01
    want = sum(-math.log(1 / (1 + math.exp(-(a - b - margin)))) for a, b in zip(c, r, strict=True)) / 3
    want += center * sum((a + b) ** 2 for a, b in zip(c, r, strict=True)) / 3
    assert bradley_terry_loss(mx.array(c), mx.array(r), margin, center).item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize(
    "prompt,answer,score",
    [
        ("sort: q c m f\n", "c f m q", 1.0),
        ("sort: q c m f\n", "q c m f", 1 / 3),  # one of three adjacent pairs in order
        ("sort: q c m f\n", "c f m", 2 / 3 * 3 / 4),  # in order, but 2 of the 3 pairs needed and 3 of 4 letters
        ("sort: q c m f\n", "c", 0.0),  # one letter: no pair in order
        ("sort: q c m f\n", "c f m q ", 3 / 4 * 4 / 5),  # a trailing space is an empty (invented) word
        ("sort: q c m f\n", "c  f m q", 2 / 4 * 4 / 5),  # so is a doubled space
        ("sort: q c m f\n", "c f m q z", 0.8),  # an extra letter
        ("sort: q c m f\n", "a b d e", 0.0),  # sorted, but none of the prompt's letters
        ("sort: q c m f\n", "", 0.0),
    ],
)
def test_sorted_letters_reward(prompt: str, answer: str, score: float) -> None:
    assert sorted_letters_score(prompt, answer) == pytest.approx(score)
