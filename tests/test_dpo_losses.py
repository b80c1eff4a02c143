"""Each DPO loss variant against TRL's formulas, written out independently here with math."""

from __future__ import annotations

import math

import mlx.core as mx
import pytest

from engine.algorithms.dpo import dpo_losses

PC = [-3.0, -10.0, -4.5, -20.0]
PR = [-5.0, -9.0, -4.5, -25.0]
RC = [-4.0, -9.5, -5.0, -21.0]
RR = [-4.0, -9.5, -4.0, -22.0]


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def reference(kind: str, pc, pr, rc, rr, beta, ls):
    h = (pc - rc) - (pr - rr)
    a, b = pc - rc, pr - rr
    if kind == "sigmoid":
        return -logsig(beta * h) * (1 - ls) - logsig(-beta * h) * ls
    if kind == "robust":
        return (-logsig(beta * h) * (1 - ls) + logsig(-beta * h) * ls) / (1 - 2 * ls)
    if kind == "hinge":
        return max(0.0, 1 - beta * h)
    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if kind == "apo_zero":
        return (1 - sig(beta * a)) + sig(beta * b)
    if kind == "apo_down":
        return sig(beta * a) + (1 - sig(beta * (a - b)))
    if kind == "sppo_hard":
        return (a - 0.5 / beta) ** 2 + (b + 0.5 / beta) ** 2
    if kind == "nca_pair":
        return -logsig(beta * a) - 0.5 * logsig(-beta * a) - 0.5 * logsig(-beta * b)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["sigmoid", "robust", "hinge", "ipo", "apo_zero", "apo_down", "sppo_hard", "nca_pair"])
@pytest.mark.parametrize(("beta", "ls"), [(0.1, 0.0), (0.5, 0.2)])
def test_loss_matches_formula(kind, beta, ls):
    got = dpo_losses(mx.array(PC), mx.array(PR), mx.array(RC), mx.array(RR), beta, kind, ls).tolist()
    want = [reference(kind, *vals, beta, ls if kind in ("sigmoid", "robust") else 0.0) for vals in zip(PC, PR, RC, RR, strict=True)]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_sigmoid_at_zero_margin_is_log2():
    z = mx.zeros(3)
    assert dpo_losses(z, z, z, z, 0.1).tolist() == pytest.approx([math.log(2)] * 3, rel=1e-6)


def test_unknown_loss_type_is_refused():
    z = mx.zeros(1)
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        dpo_losses(z, z, z, z, 0.1, "nope")


def test_dpo_kl_panel_value_is_k2_of_the_per_token_log_ratio():
    from engine.algorithms.dpo import data_kl

    pc, pr, rc, rr = [-3.0, -10.0], [-5.0, -9.0], [-4.0, -9.5], [-4.0, -9.5]
    tc, tr = [4.0, 5.0], [2.0, 3.0]

    def k2(r):
        return r * r / 2

    want = (sum(k2((b - a) / t) for a, b, t in zip(pc, rc, tc, strict=True)) / 2
            + sum(k2((b - a) / t) for a, b, t in zip(pr, rr, tr, strict=True)) / 2) / 2
    got = data_kl(*(mx.array(v) for v in (pc, pr, rc, rr, tc, tr))).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert got > 0
    same = mx.array([-2.0, -3.0])
    assert data_kl(same, same, same, same, mx.ones(2), mx.ones(2)).item() == 0.0
