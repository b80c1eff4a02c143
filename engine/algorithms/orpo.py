"""ORPO: odds-ratio preference optimisation, no reference model (TRL's ORPOTrainer).

With ``a_c``, ``a_r`` the mean per-token log-probs of the chosen and rejected answers,
the log odds ratio is ``(a_c - a_r) - (log(1 - exp(a_c)) - log(1 - exp(a_r)))``, and

    loss = nll - orpo.beta * mean(logsigmoid(log_odds))

where ``nll`` is the cross-entropy of the chosen answers (summed over their tokens, divided
by the batch's chosen tokens: an SFT loss on the chosen side).

Metrics (TRL names): ``rewards/chosen`` = ``beta * a_c``, ``rewards/rejected`` = ``beta * a_r``,
``rewards/accuracies`` (share of pairs with the higher chosen reward), ``rewards/margins``,
``logps/chosen`` and ``logps/rejected`` (the means ``a_c``, ``a_r``), ``nll_loss``,
``log_odds_ratio`` (mean ``logsigmoid(log_odds)``) and ``log_odds_chosen`` (mean log odds).
Panel keys: ``reward`` is ``rewards/margins``; ``kl`` is null (no reference).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from engine.algorithms.pairs import PairLoss


def log1mexp(x: mx.array) -> mx.array:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near 0 and for very negative x."""
    # both branches are evaluated (and differentiated): each gets inputs where it is finite
    return mx.where(x > -0.6931, mx.log(-mx.expm1(x)), mx.log1p(-mx.exp(mx.minimum(x, -0.6931))))


def orpo_terms(chosen_sum: mx.array, rejected_sum: mx.array, chosen_n: mx.array, rejected_n: mx.array, beta: float) -> tuple[mx.array, dict[str, mx.array]]:
    a_c = chosen_sum / mx.maximum(chosen_n, 1.0)
    a_r = rejected_sum / mx.maximum(rejected_n, 1.0)
    # an answer's mean log-prob is < 0; clamp a hair below so log(1 - exp) stays finite
    a_c_, a_r_ = mx.minimum(a_c, -1e-6), mx.minimum(a_r, -1e-6)
    log_odds = (a_c_ - a_r_) - (log1mexp(a_c_) - log1mexp(a_r_))
    ratio = nn.log_sigmoid(log_odds)
    nll = -chosen_sum.sum() / mx.maximum(chosen_n.sum(), 1.0)
    loss = nll - beta * ratio.mean()
    rc, rr = beta * a_c, beta * a_r
    return loss, {
        "rewards/chosen": rc.mean(),
        "rewards/rejected": rr.mean(),
        "rewards/accuracies": (rc > rr).astype(mx.float32).mean(),
        "rewards/margins": (rc - rr).mean(),
        "logps/chosen": a_c.mean(),
        "logps/rejected": a_r.mean(),
        "nll_loss": nll,
        "log_odds_ratio": ratio.mean(),
        "log_odds_chosen": log_odds.mean(),
    }


class Orpo(PairLoss):
    name = "orpo"

    def pair_loss(self, chosen_sum: mx.array, rejected_sum: mx.array, chosen_n: mx.array, rejected_n: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
        return orpo_terms(chosen_sum, rejected_sum, chosen_n, rejected_n, self.cfg.orpo.beta)
