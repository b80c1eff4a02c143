"""GRPO: groups of sampled completions per prompt, group-normalised advantages, clipped objective.

Each step takes ``train.batch_size`` prompts (across ranks), samples
``grpo.num_generations`` completions for each in one batched, KV-cached generation,
scores them with the registered reward functions named in ``grpo.reward_functions``
(summed), and sets each completion's advantage to ``(r - mean_group) / (std_group + 1e-4)``
(std with Bessel's correction, as TRL; without the division when ``grpo.scale_rewards``
is off). The loss per completion token is
``-min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * k3``
with ``ratio = pi / pi_old`` (1 on the first of ``grpo.num_iterations`` passes) and
``k3 = exp(ref - logp) - (ref - logp) - 1``; it is reduced by ``grpo.loss_type``:
``grpo`` (mean over each completion's tokens, then over completions), ``bnpo`` (mean over
all tokens of the batch), ``dr_grpo`` (sum / (completions x generation.max_new_tokens)),
``dapo`` (sum / tokens of the global batch across ranks). Completions cut at
``generation.max_new_tokens`` without EOS are masked out of the loss when
``grpo.mask_truncated_completions`` is on (the default, as TRL).

With ``train.grad_accumulation_steps = k`` the step still generates, scores and normalises
the advantages of all its completions (whole groups) first; only the loss is split over k
micro-batches of completions (consecutive, so a group stays together where k divides the
batch's groups; the loss does not need it). Each micro-batch is normalised by the whole
batch's completion and token counts (``reduce_loss``'s ``rows`` / ``tokens``), so the
micro-batches' losses and gradients sum to the un-accumulated step's for every loss type,
and the token-mean metrics likewise. Reference and old log-probs are computed a
micro-batch at a time, so no log-prob pass holds more than one micro-batch's logits
(generation still samples the whole step's completions together).

Panel keys: ``reward`` is the mean summed score of the sampled completions; ``kl`` is the
mean per-token k3 KL to the reference (null when ``grpo.beta = 0``: no reference is kept).
Extras (TRL names): ``reward_std`` (mean within-group std), ``frac_reward_zero_std``,
``completions/mean_length``, ``completions/min_length``, ``completions/max_length``,
``completions/clipped_ratio`` (share cut at max_new_tokens without EOS), ``entropy``,
``clip_ratio/low_mean``, ``clip_ratio/high_mean``, ``clip_ratio/region_mean`` and
``rewards/<function>/mean``. Evaluation generates one greedy completion per eval prompt
and reports its mean reward (``eval/reward``) and length, and, when ``data.task_reward``
names the task's reward, the share answered exactly right (``eval/task_score``).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.algorithms.base import Algorithm, StepResult
from engine.compile import compile_pays
from engine.data import Prompt
from engine.rewards import parse_reward_names, score_completions
from engine.rollout import (
    CompletionBatch,
    ReferencePolicy,
    completion_batch,
    completion_stats,
    eos_token_ids,
    pad_id,
    require_sampling,
    sample_completions,
)
from engine.task_eval import TaskScorer

ADV_EPS = 1e-4


def group_advantages(rewards: mx.array, group_size: int, scale: bool = True) -> tuple[mx.array, mx.array]:
    """(advantages, per-group std) for rewards laid out group after group."""
    grouped = rewards.reshape(-1, group_size)
    mean = grouped.mean(axis=1, keepdims=True)
    std = mx.sqrt(((grouped - mean) ** 2).sum(axis=1, keepdims=True) / max(group_size - 1, 1))
    adv = grouped - mean
    if scale:
        adv = adv / (std + ADV_EPS)
    return adv.reshape(-1), std.reshape(-1)


def k3_kl(logp: mx.array, ref_logp: mx.array) -> mx.array:
    """Per-token ``exp(ref - logp) - (ref - logp) - 1`` (non-negative, unbiased for KL(pi||ref))."""
    d = ref_logp - logp
    return mx.exp(d) - d - 1


def grpo_token_loss(logp: mx.array, old_logp: mx.array, adv: mx.array, eps_low: float, eps_high: float) -> tuple[mx.array, mx.array]:
    """Per-token clipped surrogate loss [N, T] and the ratio."""
    ratio = mx.exp(logp - old_logp)
    a = adv[:, None]
    unclipped = ratio * a
    clipped = mx.clip(ratio, 1 - eps_low, 1 + eps_high) * a
    return -mx.minimum(unclipped, clipped), ratio


def reduce_loss(
    per_token: mx.array,
    mask: mx.array,
    loss_type: str,
    max_new_tokens: int,
    global_tokens: float | mx.array | None = None,
    rows: float | mx.array | None = None,
    tokens: float | mx.array | None = None,
) -> mx.array:
    """The loss of ``per_token`` [N, T] under ``loss_type``. When the rows are one micro-batch
    of a step's batch, ``rows`` and ``tokens`` are the whole batch's completions and masked
    tokens: each micro-batch then returns its share, and the shares sum to the batch's loss."""
    masked = per_token * mask
    n = per_token.shape[0] if rows is None else rows
    n_tok = mask.sum() if tokens is None else mx.array(tokens, dtype=mx.float32)
    if loss_type == "grpo":
        return (masked.sum(axis=1) / mx.maximum(mask.sum(axis=1), 1.0)).sum() / n
    if loss_type == "bnpo":
        return masked.sum() / mx.maximum(n_tok, 1.0)
    if loss_type == "dr_grpo":
        return masked.sum() / (n * max_new_tokens)
    if loss_type == "dapo":
        denom = mx.array(global_tokens, dtype=mx.float32) if global_tokens is not None else n_tok
        return masked.sum() / mx.maximum(denom, 1.0)
    raise ValueError(f"unknown GRPO loss_type {loss_type!r}")


class Grpo(Algorithm):
    name = "grpo"
    supports_grad_accumulation = True  # the loss of a step's completions, split (module docstring)
    # loss_fn reads nothing back to the host, its counts come as arrays and _shape_buckets
    # pads its shapes: on a GPU the whole step is one compiled call (engine.compile)
    compilable = True

    def setup(self, saved: dict[str, mx.array]) -> None:
        cfg, ctx = self.cfg, self.ctx
        section = getattr(cfg, self.name)  # grpo, or a subclass's own section (rloo)
        require_sampling(cfg)
        self.rewards = parse_reward_names(section.reward_functions, f"{self.name}.reward_functions")
        self.prompts, self.eval_prompts = self.read_data("prompts")
        self.eos = eos_token_ids(ctx.tokenizer)
        self.reference = ReferencePolicy(ctx.model) if section.beta > 0 else None
        self.task = TaskScorer.from_config(cfg)

    # -------------------------------------------------------------- pieces

    def _temperature(self) -> float:
        t = self.cfg.generation.temperature
        return t if t > 0 else 1.0

    def _logprobs(self, model: nn.Module, batch: CompletionBatch) -> tuple[mx.array, mx.array]:
        return completion_stats(model, batch, self._temperature())  # the logits are never written out whole

    def loss_fn(
        self,
        model: nn.Module,
        tokens: mx.array,
        index: mx.array,
        mask: mx.array,
        targets: mx.array,
        adv: mx.array,
        old_logp: mx.array | None,
        ref_logp: mx.array | None,
        global_tokens: mx.array | None,
        rows: mx.array | None = None,
        n_tokens: mx.array | None = None,
    ) -> tuple[mx.array, dict[str, mx.array]]:
        """The loss of these completions; ``rows`` / ``n_tokens``: the whole step's counts when
        they are one micro-batch of it (see ``reduce_loss``), so micro-batch results sum."""
        g = self.cfg.grpo
        batch = CompletionBatch(tokens, index, mask, targets, [])
        logp, ent = self._logprobs(model, batch)
        old = mx.stop_gradient(logp) if old_logp is None else old_logp
        eps_high = g.epsilon_high if g.epsilon_high > 0 else g.epsilon
        per_tok, ratio = grpo_token_loss(logp, old, adv, g.epsilon, eps_high)
        aux: dict[str, mx.array] = {}
        n_tok = mx.maximum(mask.sum() if n_tokens is None else mx.array(n_tokens, dtype=mx.float32), 1.0)
        if ref_logp is not None:
            kl = k3_kl(logp, ref_logp)
            per_tok = per_tok + g.beta * kl
            aux["kl"] = mx.stop_gradient((kl * mask).sum() / n_tok)
        loss = reduce_loss(per_tok, mask, g.loss_type, self.cfg.generation.max_new_tokens, global_tokens, rows, n_tokens)
        a = adv[:, None]
        low = ((ratio < 1 - g.epsilon) & (a < 0)).astype(mx.float32)
        high = ((ratio > 1 + eps_high) & (a > 0)).astype(mx.float32)
        aux["clip_ratio/low_mean"] = mx.stop_gradient((low * mask).sum() / n_tok)
        aux["clip_ratio/high_mean"] = mx.stop_gradient((high * mask).sum() / n_tok)
        aux["clip_ratio/region_mean"] = mx.stop_gradient(((low + high) * mask).sum() / n_tok)
        aux["entropy"] = mx.stop_gradient(ent.sum() / n_tok)
        return loss, aux

    def _rollout(self, prompts: list[Prompt], repeats: int, temperature: float) -> tuple[list[Prompt], Any, list[str]]:
        rows = [p for p in prompts for _ in range(repeats)]
        rollout, texts = sample_completions(self.ctx, [p.prompt_ids for p in rows], self.eos, temperature)
        return rows, rollout, texts

    def _micro_batches(self, rows: list[Prompt], rollout: Any, mask_truncated: bool) -> list[tuple[slice, CompletionBatch]]:
        """The step's completions as ``train.grad_accumulation_steps`` consecutive micro-batches
        (one when it is 1), each padded to its own longest row; cut completions masked out
        when ``mask_truncated`` (no gradient from them)."""
        out = []
        for part in self.ctx.micro_batches(list(range(len(rows)))):
            at = slice(part[0], part[-1] + 1)
            batch = completion_batch([p.prompt_ids for p in rows[at]], rollout.completion_ids[at], pad_id(self.ctx.tokenizer), **self._shape_buckets())
            if mask_truncated:
                kept = mx.array([1.0 if f else 0.0 for f in rollout.finished[at]])
                batch = CompletionBatch(batch.tokens, batch.index, batch.mask * kept[:, None], batch.targets, batch.lengths)
            out.append((at, batch))
        return out

    def _shape_buckets(self) -> dict[str, int]:
        """Padding for a compiled step (GPU): rows and the completion axis to multiples of 64
        tokens, so a run traces its step a few times rather than at every new length (the
        output layer runs on the completion axis: padding it to ``max_new_tokens`` would cost
        short completions more than a trace). Eager (CPU): none."""
        if not compile_pays(self.cfg.train.compile):
            return {}
        return {"multiple": 64}

    def _no_grad_logprobs(self, model: nn.Module, batches: list[tuple[slice, CompletionBatch]]) -> list[mx.array]:
        """Per-token log-probs of each micro-batch under ``model``, one micro-batch at a time."""
        out = []
        for _, batch in batches:
            out.append(mx.stop_gradient(self._logprobs(model, batch)[0]))
            mx.eval(out[-1])
        return out

    # -------------------------------------------------------------- the step

    def train_step(self, step: int) -> StepResult:
        cfg, ctx, g = self.cfg, self.ctx, self.cfg.grpo
        prompts = [self.prompts[i] for i in self.order.next_indices()]
        rows, rollout, texts = self._rollout(prompts, g.num_generations, cfg.generation.temperature)
        scores, per_fn = score_completions(self.rewards, [p.text for p in rows], texts, [p.extra for p in rows])
        rewards = mx.array(scores, dtype=mx.float32)
        adv, std = group_advantages(rewards, g.num_generations, g.scale_rewards)
        # advantages over whole groups first; then the loss in micro-batches (one unless accumulating)
        batches = self._micro_batches(rows, rollout, g.mask_truncated_completions)
        ref_logp: list[Any] = [None] * len(batches)
        if self.reference is not None:
            with self.reference.active() as ref_model:
                ref_logp = self._no_grad_logprobs(ref_model, batches)
        old_logp: list[Any] = [None] * len(batches)
        if g.num_iterations > 1:
            old_logp = self._no_grad_logprobs(ctx.model, batches)
        tokens = sum(float(b.mask.sum().item()) for _, b in batches)  # this rank's, after masking
        global_tokens = mx.array(ctx.world.sum(tokens) / ctx.world.size) if g.loss_type == "dapo" else None
        # counts as arrays: a compiled step would retrace for every new Python number
        micro = [
            (1.0, (b.tokens, b.index, b.mask, b.targets, adv[at], old_logp[j], ref_logp[j], global_tokens, mx.array(float(len(rows))), mx.array(tokens)))
            for j, (at, b) in enumerate(batches)
        ]
        losses, norms, auxes = [], [], []
        for _ in range(g.num_iterations):
            ctx.check()
            loss, aux, norm = ctx.update_accumulated(self.loss_fn, micro)  # shares of the batch: weights 1
            losses.append(loss)
            norms.append(norm)
            auxes.append(aux)
        self._emit_samples(rows, texts, scores, adv)
        lengths = [len(c) for c in rollout.completion_ids]
        stds = std  # one std per group
        zero_std = (mx.abs(stds) < 1e-6).astype(mx.float32).mean()
        n = len(auxes)
        extras: dict[str, Any] = {
            "reward_std": float(stds.mean().item()),
            "frac_reward_zero_std": float(zero_std.item()),
            "completions/mean_length": sum(lengths) / len(lengths),
            "completions/min_length": float(min(lengths)),
            "completions/max_length": float(max(lengths)),
            "completions/clipped_ratio": sum(1 for f in rollout.finished if not f) / len(lengths),
        }
        for key in ("entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
            extras[key] = sum(a[key] for a in auxes) / n
        for name, values in per_fn.items():
            extras[f"rewards/{name}/mean"] = sum(values) / len(values)
        return StepResult(
            sum(losses) / n,
            sum(norms) / n,
            float(sum(len(p.prompt_ids) for p in rows) + rollout.num_tokens),
            reward=float(rewards.mean().item()),
            kl=(sum(a["kl"] for a in auxes) / n) if self.reference is not None else None,
            extras=extras,
        )

    def _emit_samples(self, rows: list[Prompt], texts: list[str], scores: list[float], adv: mx.array) -> None:
        """The best and the worst completion of the step's first group."""
        g = self.cfg.grpo.num_generations
        advs = adv.tolist()
        group = list(range(min(g, len(rows))))
        best = max(group, key=lambda i: scores[i])
        worst = min(group, key=lambda i: scores[i])
        for i in dict.fromkeys([best, worst]):
            self.ctx.sample(prompt=rows[i].text, completion=texts[i], score=scores[i], advantage=advs[i])

    def evaluate(self) -> dict[str, float]:
        if not self.eval_prompts:
            return {}
        totals: list[float] = []
        lengths: list[int] = []
        right: list[float] = []
        chunk = 64
        for start in range(0, len(self.eval_prompts), chunk):
            part = self.eval_prompts[start : start + chunk]
            rows, rollout, texts = self._rollout(part, 1, 0.0)
            scores, _ = score_completions(self.rewards, [p.text for p in rows], texts, [p.extra for p in rows])
            totals.extend(scores)
            lengths.extend(len(c) for c in rollout.completion_ids)
            if self.task is not None:
                right.extend(self.task.correct([p.text for p in rows], texts, rollout.finished, [p.extra for p in rows]))
        out = {"reward": sum(totals) / len(totals), "completions/mean_length": sum(lengths) / len(lengths)}
        if right:
            out["task_score"] = sum(right) / len(right)
        return out
