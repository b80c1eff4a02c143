"""SimPO and CPO: reference-free pair losses (TRL's CPOTrainer, ``loss_type`` simpo / sigmoid).

``simpo.loss_type = "simpo"`` (SimPO): with ``a_c``, ``a_r`` the mean per-token log-probs of
the chosen and rejected answers, ``logits = (a_c - a_r) - gamma / beta`` and the loss per
pair is ``-logsigmoid(beta * logits)`` (with ``label_smoothing`` ``ls``:
``-(1 - ls) logsigmoid(beta * logits) - ls * logsigmoid(-beta * logits)``).

``simpo.loss_type = "cpo"`` (CPO, TRL's ``sigmoid``): the same with *summed* log-probs
``s_c``, ``s_r`` and no margin: ``logits = s_c - s_r``.

Both add ``cpo_alpha * nll``, the chosen answers' cross-entropy (summed over their tokens,
divided by the batch's chosen tokens); SimPO proper uses ``cpo_alpha = 0``, CPO 1.

Metrics (TRL names): ``rewards/chosen`` = ``beta * a_c`` (``beta * s_c`` for cpo),
``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``,
``logps/rejected`` (the log-probs the loss uses), ``nll_loss``. Panel keys: ``reward`` is
``rewards/margins``; ``kl`` is null (no reference). Held-out ``eval/rewards/accuracies``
ranks by the mean per-token log-prob for both (engine.algorithms.pairs).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from engine.algorithms.pairs import PairLoss


def simpo_terms(
    chosen_sum: mx.array,
    rejected_sum: mx.array,
    chosen_n: mx.array,
    rejected_n: mx.array,
    *,
    loss_type: str,
    beta: float,
    gamma: float,
    cpo_alpha: float,
    label_smoothing: float,
) -> tuple[mx.array, dict[str, mx.array]]:
    if loss_type == "simpo":
        lc, lr = chosen_sum / mx.maximum(chosen_n, 1.0), rejected_sum / mx.maximum(rejected_n, 1.0)
        logits = (lc - lr) - gamma / beta
    elif loss_type == "cpo":
        lc, lr = chosen_sum, rejected_sum
        logits = lc - lr
    else:
        raise ValueError(f"unknown simpo.loss_type {loss_type!r}")
    ls = label_smoothing
    losses = -(1 - ls) * nn.log_sigmoid(beta * logits) - ls * nn.log_sigmoid(-beta * logits)
    nll = -chosen_sum.sum() / mx.maximum(chosen_n.sum(), 1.0)
    loss = losses.mean() + cpo_alpha * nll
    rc, rr = beta * lc, beta * lr
    return loss, {
        "rewards/chosen": rc.mean(),
        "rewards/rejected": rr.mean(),
        "rewards/accuracies": (rc > rr).astype(mx.float32).mean(),
        "rewards/margins": (rc - rr).mean(),
        "logps/chosen": lc.mean(),
        "logps/rejected": lr.mean(),
        "nll_loss": nll,
    }


class Simpo(PairLoss):
    name = "simpo"

    def pair_loss(self, chosen_sum: mx.array, rejected_sum: mx.array, chosen_n: mx.array, rejected_n: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
        s = self.cfg.simpo
        return simpo_terms(
            chosen_sum, rejected_sum, chosen_n, rejected_n,
            loss_type=s.loss_type, beta=s.beta, gamma=s.gamma, cpo_alpha=s.cpo_alpha, label_smoothing=s.label_smoothing,
        )
