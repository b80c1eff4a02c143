"""Reward modelling (Bradley–Terry): a scalar head on the policy's trunk, trained on pairs.

Loss per pair: ``-logsigmoid(r_chosen - r_rejected - reward.margin)``, plus
``reward.center_rewards_coefficient * mean((r_chosen + r_rejected)^2)`` when that is set
(TRL's centering term, which keeps scores near zero).

Metrics (TRL's names): ``accuracy`` (fraction of pairs with r_chosen > r_rejected),
``margin`` (mean r_chosen - r_rejected), ``mean_reward``, ``min_reward``, ``max_reward``
(over every chosen and rejected score in the batch). Panel keys: ``reward`` is the mean
margin (as DPO's ``rewards/margins``), ``kl`` is null (no reference policy). ``eval/`` rows
carry the same keys on the eval set.

Checkpoints hold the trunk's adapters and the head (``extra.safetensors``), which is what
``ppo.reward_model`` loads (see ``engine/reward_model.py``).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from engine.algorithms.base import Algorithm, StepResult
from engine.algorithms.dpo import pair_rows
from engine.batching import collate
from engine.data import PreferencePair
from engine.reward_model import RewardModel


def bradley_terry_loss(chosen: mx.array, rejected: mx.array, margin: float = 0.0, center: float = 0.0) -> mx.array:
    loss = -nn.log_sigmoid(chosen - rejected - margin).mean()
    if center > 0:
        loss = loss + center * ((chosen + rejected) ** 2).mean()
    return loss


def pair_metrics(chosen: mx.array, rejected: mx.array) -> dict[str, mx.array]:
    both = mx.concatenate([chosen, rejected])
    return {
        "accuracy": (chosen > rejected).astype(mx.float32).mean(),
        "margin": (chosen - rejected).mean(),
        "mean_reward": both.mean(),
        "min_reward": both.min(),
        "max_reward": both.max(),
    }


class RewardModelling(Algorithm):
    name = "reward"
    supports_grad_accumulation = True

    def setup(self, saved: dict[str, mx.array]) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.train, self.eval = self.read_data("pairs")
        self.model = RewardModel(ctx.model, seed=cfg.train.seed)
        mx.eval(self.model.head.parameters())

    def trainable_module(self) -> nn.Module:
        return self.model

    def loss_fn(self, model: RewardModel, tokens: mx.array, lengths: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
        r = self.cfg.reward
        scores = model(tokens, lengths)
        n = tokens.shape[0] // 2
        chosen, rejected = scores[:n], scores[n:]
        loss = bradley_terry_loss(chosen, rejected, r.margin, r.center_rewards_coefficient)
        aux = {k: mx.stop_gradient(v) for k, v in pair_metrics(chosen, rejected).items()}
        return loss, aux

    @staticmethod
    def _batch(pairs: list[PreferencePair]) -> tuple[mx.array, mx.array, int]:
        rows = pair_rows(pairs)
        batch = collate(rows, shift=0)  # the reward model reads every token
        lengths = mx.array([len(p) + len(c) for p, c in rows])
        return batch.tokens, lengths, batch.num_tokens

    def train_step(self, step: int) -> StepResult:
        pairs = [self.train[i] for i in self.order.next_indices()]
        micro, num_tokens = [], 0
        for chunk in self.ctx.micro_batches(pairs):  # train.grad_accumulation_steps
            tokens, lengths, n = self._batch(chunk)
            micro.append((len(chunk) / len(pairs), (tokens, lengths)))
            num_tokens += n
        loss, aux, norm = self.ctx.update_accumulated(self.loss_fn, micro)
        return StepResult(loss, norm, float(num_tokens), reward=aux["margin"], extras=dict(aux))

    def evaluate(self) -> dict[str, float]:
        if not self.eval:
            return {}
        chosen, rejected = [], []
        step = max(self.cfg.train.batch_size, 16)
        for start in range(0, len(self.eval), step):
            self.ctx.check()
            chunk = self.eval[start : start + step]
            tokens, lengths, _ = self._batch(chunk)
            scores = mx.stop_gradient(self.model(tokens, lengths))
            mx.eval(scores)
            chosen.append(scores[: len(chunk)])
            rejected.append(scores[len(chunk) :])
            self.ctx.phase("evaluating", min(start + step, len(self.eval)), len(self.eval))
        c, r = mx.concatenate(chosen), mx.concatenate(rejected)
        rc = self.cfg.reward
        out = {"loss": bradley_terry_loss(c, r, rc.margin, rc.center_rewards_coefficient), **pair_metrics(c, r)}
        metrics = {k: float(v.item()) for k, v in out.items()}
        metrics["reward"] = metrics["margin"]
        return metrics

    def extra_arrays(self) -> dict[str, mx.array]:
        return self.model.head_arrays()

    def load_extra_arrays(self, arrays: dict[str, mx.array]) -> None:
        self.model.load_head_arrays(arrays)
