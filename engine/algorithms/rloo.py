"""RLOO: REINFORCE with a leave-one-out baseline over k completions per prompt (TRL's RLOOTrainer).

Each step takes ``train.batch_size`` prompts, samples ``rloo.num_generations`` (k)
completions for each (batched, KV-cached), and scores them with the registered reward
functions named in ``rloo.reward_functions`` (summed), as GRPO does. With a reference
(``rloo.beta > 0``) each completion's score is penalised by its KL to the starting policy,
``r = score - beta * kl``, ``kl`` the sum over its tokens of ``log pi - log pi_ref`` (k1),
as in TRL. The advantage of completion i is its reward minus the mean of the *other* k - 1
rewards of its group: ``A_i = r_i - (sum_j r_j - r_i) / (k - 1)`` (optionally divided by
the batch's std, ``rloo.normalize_advantages``). The loss per completion token is the
clipped surrogate ``-min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon) * A)`` with
``ratio = pi / pi_old`` (1 on the first of ``rloo.num_iterations`` passes: plain
REINFORCE, ``-A * log pi``), averaged over each completion's tokens, then over completions.

With ``train.grad_accumulation_steps = k`` (as GRPO): all completions are generated and
scored, their KL penalties and leave-one-out advantages computed over the full groups (and
the batch std), then the loss is split over k consecutive micro-batches of completions,
each divided by the whole batch's completion count (and its metrics by the batch's token
count), so their sum is the un-accumulated step's loss and gradient.

Panel keys: ``reward`` is the mean score of the sampled completions (before the KL
penalty); ``kl`` is the mean summed k1 KL of a completion to the reference (null when
``rloo.beta = 0``: no reference is kept). Extras (TRL names): ``reward_std``,
``frac_reward_zero_std``, ``completions/mean_length``, ``completions/min_length``,
``completions/max_length``, ``completions/clipped_ratio``, ``entropy``,
``clip_ratio/region_mean``, ``rewards/<function>/mean``. Evaluation is GRPO's: one greedy
completion per eval prompt, ``eval/reward`` and ``eval/task_score``.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.algorithms.base import StepResult
from engine.algorithms.grpo import Grpo, grpo_token_loss, reduce_loss
from engine.rewards import score_completions
from engine.rollout import CompletionBatch


def leave_one_out_advantages(rewards: mx.array, k: int) -> mx.array:
    """``r_i - mean(r_j, j != i)`` within each group of ``k`` consecutive completions."""
    grouped = rewards.reshape(-1, k)
    others = (grouped.sum(axis=1, keepdims=True) - grouped) / (k - 1)
    return (grouped - others).reshape(-1)


class Rloo(Grpo):
    """GRPO's rollouts, rewards and evaluation; RLOO's baseline, KL-in-reward and loss."""

    name = "rloo"

    def loss_fn(  # type: ignore[override]
        self,
        model: nn.Module,
        tokens: mx.array,
        index: mx.array,
        mask: mx.array,
        targets: mx.array,
        adv: mx.array,
        old_logp: mx.array | None,
        rows: mx.array | None = None,
        n_tokens: mx.array | None = None,
    ) -> tuple[mx.array, dict[str, mx.array]]:
        """``rows`` / ``n_tokens``: the whole step's completion and token counts when these
        completions are one micro-batch of it, so the micro-batches' results sum to the step's."""
        eps = self.cfg.rloo.epsilon
        batch = CompletionBatch(tokens, index, mask, targets, [])
        logp, ent = self._logprobs(model, batch)
        old = mx.stop_gradient(logp) if old_logp is None else old_logp
        per_tok, ratio = grpo_token_loss(logp, old, adv, eps, eps)
        loss = reduce_loss(per_tok, mask, "grpo", self.cfg.generation.max_new_tokens, rows=rows)
        n_tok = mx.maximum(mask.sum() if n_tokens is None else mx.array(n_tokens, dtype=mx.float32), 1.0)
        clipped = ((ratio < 1 - eps) | (ratio > 1 + eps)).astype(mx.float32)
        return loss, {
            "entropy": mx.stop_gradient(ent.sum() / n_tok),
            "clip_ratio/region_mean": mx.stop_gradient((clipped * mask).sum() / n_tok),
        }

    def train_step(self, step: int) -> StepResult:
        cfg, ctx, r = self.cfg, self.ctx, self.cfg.rloo
        prompts = [self.prompts[i] for i in self.order.next_indices()]
        rows, rollout, texts = self._rollout(prompts, r.num_generations, cfg.generation.temperature)
        scores, per_fn = score_completions(self.rewards, [p.text for p in rows], texts, [p.extra for p in rows])
        score = mx.array(scores, dtype=mx.float32)
        batches = self._micro_batches(rows, rollout, False)  # one unless train.grad_accumulation_steps > 1
        old_logp: list[Any] = [None] * len(batches)
        if r.num_iterations > 1 or self.reference is not None:
            old_logp = self._no_grad_logprobs(ctx.model, batches)
        seq_kl = None
        reward = score
        if self.reference is not None:
            with self.reference.active() as ref_model:
                ref_logp = self._no_grad_logprobs(ref_model, batches)
            # each completion's summed k1 KL, micro-batch by micro-batch, for the whole batch's rewards
            seq_kl = mx.concatenate([((o - f) * b.mask).sum(axis=1) for o, f, (_, b) in zip(old_logp, ref_logp, batches, strict=True)])
            reward = score - r.beta * seq_kl
        adv = leave_one_out_advantages(reward, r.num_generations)
        if r.normalize_advantages:
            adv = adv / (mx.sqrt(((adv - adv.mean()) ** 2).sum() / max(adv.size - 1, 1)) + 1e-4)
        mx.eval(adv)
        n_tokens = sum(float(b.mask.sum().item()) for _, b in batches)
        micro = [(1.0, (b.tokens, b.index, b.mask, b.targets, adv[at], old_logp[j], mx.array(float(len(rows))), mx.array(n_tokens))) for j, (at, b) in enumerate(batches)]
        passes = []
        for _ in range(r.num_iterations):
            ctx.check()
            passes.append(ctx.update_accumulated(self.loss_fn, micro))  # shares of the batch: weights 1
        self._emit_group_samples(rows, texts, scores, adv, r.num_generations)
        grouped = score.reshape(-1, r.num_generations)
        std = mx.sqrt(((grouped - grouped.mean(axis=1, keepdims=True)) ** 2).sum(axis=1) / max(r.num_generations - 1, 1))
        lengths = [len(c) for c in rollout.completion_ids]
        n = len(passes)
        extras: dict[str, Any] = {
            "reward_std": float(std.mean().item()),
            "frac_reward_zero_std": float((std < 1e-6).astype(mx.float32).mean().item()),
            "completions/mean_length": sum(lengths) / len(lengths),
            "completions/min_length": float(min(lengths)),
            "completions/max_length": float(max(lengths)),
            "completions/clipped_ratio": sum(1 for f in rollout.finished if not f) / len(lengths),
        }
        for key in ("entropy", "clip_ratio/region_mean"):
            extras[key] = sum(p[1][key] for p in passes) / n
        for name, values in per_fn.items():
            extras[f"rewards/{name}/mean"] = sum(values) / len(values)
        return StepResult(
            sum(p[0] for p in passes) / n,
            sum(p[2] for p in passes) / n,
            float(sum(len(p.prompt_ids) for p in rows) + rollout.num_tokens),
            reward=float(score.mean().item()),
            kl=float(seq_kl.mean().item()) if seq_kl is not None else None,
            extras=extras,
        )

    def _emit_group_samples(self, rows: list[Any], texts: list[str], scores: list[float], adv: mx.array, k: int) -> None:
        """The best and the worst completion of the step's first group."""
        advs = adv.tolist()
        group = list(range(min(k, len(rows))))
        for i in dict.fromkeys([max(group, key=lambda i: scores[i]), min(group, key=lambda i: scores[i])]):
            self.ctx.sample(prompt=rows[i].text, completion=texts[i], score=scores[i], advantage=advs[i])
