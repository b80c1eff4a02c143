"""PPO with a value head, GAE and a KL penalty to the reference policy (TRL's PPO, on MLX).

One step:

1. take ``train.batch_size`` prompts and sample one completion each (batched, KV-cached);
2. score each completion: a trained reward model (``ppo.reward_model``, a reward run
   directory or checkpoint) or a registered reward function (``ppo.reward_function``);
   ``ppo.missing_eos_penalty`` is subtracted from completions cut before EOS;
3. with no gradients, compute the policy's per-token log-probs, the value head's values and
   the reference policy's log-probs (the starting weights swapped in: no second model);
4. per-token reward ``-kl_coef * kl_t`` with ``kl_t = logp - ref`` (k1) or
   ``(exp(ref - logp) - 1) - (ref - logp)`` (k3), plus the score on the last token;
5. GAE advantages (``gamma``, ``lam``) and returns ``= advantages + values``; advantages
   whitened over the batch (``ppo.whiten_advantages``);
6. ``ppo.ppo_epochs`` passes over ``ppo.num_minibatches`` shuffled minibatches, each one
   optimizer update of the clipped policy loss plus ``vf_coef`` times the clipped value loss
   (with ``train.grad_accumulation_steps = k``: the sum of k micro-batches of the minibatch's
   rollouts, each weighted by its share of the minibatch's completion tokens — every loss term
   and statistic is a token mean over the minibatch — so it equals the whole minibatch's
   update; step 3's passes then run a micro-batch at a time too);
7. the adaptive controller (``ppo.adaptive_kl``) moves ``kl_coef`` towards ``target_kl``:
   ``coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * batch_size / kl_horizon``.

The value head sits on the policy's trunk (``ppo.value_model = "shared"``) or on a
separate copy of the base model with its own adapters (``"separate"``); the optimizer
trains the policy and the value model together. Checkpoints hold the policy's adapters
(``adapters.safetensors``) and the value head (plus the separate value model's trainable
weights) in ``extra.safetensors``.

Panel keys: ``reward`` is the mean score of the sampled completions
(``objective/scores``); ``kl`` is the mean summed per-token KL of a completion
(``objective/kl``). Extras under TRL's names: ``objective/entropy``,
``objective/non_score_reward``, ``objective/rlhf_reward``, ``policy/approxkl_avg``,
``policy/clipfrac_avg``, ``loss/policy_avg``, ``loss/value_avg``, ``val/clipfrac_avg``,
``val/ratio``, ``val/mean``, ``kl_coef``, ``completions/mean_length``,
``completions/clipped_ratio``. Evaluation generates one greedy completion per eval prompt
and reports its mean score (``eval/reward``) and, when ``data.task_reward`` names the
task's reward, the share answered exactly right (``eval/task_score``, engine.task_eval).
"""

from __future__ import annotations

import random
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from engine.algorithms.base import Algorithm, StepResult
from engine.config import resolve_path
from engine.data import Prompt
from engine.errors import ConfigError
from engine.rewards import get_reward, score_completions
from engine.rollout import (
    CompletionBatch,
    ReferencePolicy,
    completion_batch,
    completion_logprobs,
    eos_token_ids,
    gather_positions,
    pad_id,
    require_sampling,
    sample_completions,
)
from engine.task_eval import TaskScorer
from engine.value_head import ScalarHead, hidden_and_logits, hidden_size, hidden_states

# ---------------------------------------------------------------- the math (tested against plain loops)


def masked_mean(x: mx.array, mask: mx.array) -> mx.array:
    return (x * mask).sum() / mx.maximum(mask.sum(), 1.0)


def masked_whiten(x: mx.array, mask: mx.array, shift_mean: bool = True, eps: float = 1e-8) -> mx.array:
    """(x - mean) / sqrt(var + eps) over the masked entries, var with Bessel's correction (TRL)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask) * n / mx.maximum(n - 1, 1.0)
    out = (x - mean) * mx.rsqrt(var + eps)
    return out if shift_mean else out + mean


def kl_per_token(logp: mx.array, ref_logp: mx.array, estimator: str) -> mx.array:
    """k1: ``logp - ref`` (can be negative); k3: ``(exp(ref - logp) - 1) - (ref - logp)`` (>= 0)."""
    logr = ref_logp - logp
    if estimator == "k1":
        return -logr
    if estimator == "k3":
        return (mx.exp(logr) - 1) - logr
    raise ValueError(f"unknown KL estimator {estimator!r}")


def token_rewards(scores: mx.array, kl: mx.array, mask: mx.array, kl_coef: float) -> tuple[mx.array, mx.array]:
    """(rewards [N, T], non-score part): ``-kl_coef * kl`` per token, score added on the last real token."""
    non_score = -kl_coef * kl * mask
    lengths = mask.sum(axis=1).astype(mx.int32)
    last = mx.maximum(lengths - 1, 0)
    at_last = (mx.arange(mask.shape[1])[None, :] == last[:, None]).astype(mx.float32) * (lengths[:, None] > 0)
    return non_score + at_last * scores[:, None], non_score


def gae(rewards: mx.array, values: mx.array, mask: mx.array, gamma: float, lam: float) -> tuple[mx.array, mx.array]:
    """Generalised advantage estimation over completion tokens; returns (advantages, returns).

    Padding positions carry zero reward and zero value, so a row's last real token sees a
    next value of 0 (the episode ends there).
    """
    values = values * mask
    rewards = rewards * mask
    t_len = rewards.shape[1]
    last = mx.zeros((rewards.shape[0],), dtype=mx.float32)
    out = []
    for t in reversed(range(t_len)):
        next_v = values[:, t + 1] if t + 1 < t_len else mx.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        out.append(last)
    adv = mx.stack(out[::-1], axis=1)
    return adv, adv + values


def ppo_policy_loss(logp: mx.array, old_logp: mx.array, adv: mx.array, mask: mx.array, cliprange: float) -> tuple[mx.array, dict[str, mx.array]]:
    """Clipped surrogate (TRL): mean over tokens of ``max(-A r, -A clip(r, 1-c, 1+c))``."""
    diff = logp - old_logp
    ratio = mx.exp(diff)
    pg1 = -adv * ratio
    pg2 = -adv * mx.clip(ratio, 1 - cliprange, 1 + cliprange)
    loss = masked_mean(mx.maximum(pg1, pg2), mask)
    stats = {
        "policy/clipfrac_avg": masked_mean((pg2 > pg1).astype(mx.float32), mask),
        "policy/approxkl_avg": 0.5 * masked_mean(diff**2, mask),
        "val/ratio": masked_mean(ratio, mask),
    }
    return loss, stats


def ppo_value_loss(values: mx.array, old_values: mx.array, returns: mx.array, mask: mx.array, cliprange_value: float) -> tuple[mx.array, mx.array]:
    """Clipped value loss ``0.5 * mean(max((v - R)^2, (clip(v, v_old ± c) - R)^2))`` and its clip fraction."""
    clipped = old_values + mx.clip(values - old_values, -cliprange_value, cliprange_value)
    l1 = (values - returns) ** 2
    l2 = (clipped - returns) ** 2
    return 0.5 * masked_mean(mx.maximum(l1, l2), mask), masked_mean((l2 > l1).astype(mx.float32), mask)


class AdaptiveKLController:
    """``coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon`` (Ziegler et al.; TRL)."""

    def __init__(self, coef: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        err = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + err * n_steps / self.horizon
        return self.value


# ---------------------------------------------------------------- the models


class PolicyWithValue(nn.Module):
    """The policy and its value head (on the policy's trunk, or on ``value_lm``), trained together."""

    def __init__(self, policy: nn.Module, value_lm: nn.Module | None, seed: int = 0) -> None:
        super().__init__()
        self.policy = policy
        self.separate = value_lm is not None
        if value_lm is not None:
            self.value_lm = value_lm
        self.value_head = ScalarHead(hidden_size(value_lm if value_lm is not None else policy), seed=seed + 1)

    def __call__(self, inputs: mx.array) -> tuple[mx.array, mx.array]:
        """(logits [N, L, V], values [N, L]) for ``inputs``."""
        if self.separate:
            return self.policy(inputs), self.value_head(hidden_states(self.value_lm, inputs))
        h, logits = hidden_and_logits(self.policy, inputs)
        return logits, self.value_head(h)


class ScoreSource:
    """Scores completions with a reward model or a registered reward function."""

    def __init__(self, algo: Ppo) -> None:
        cfg, ctx = algo.cfg, algo.ctx
        self.tokenizer = ctx.tokenizer
        self.rm = None
        if cfg.ppo.reward_model:
            from engine.reward_model import load_reward_model

            ctx.phase("loading reward model", 0, 0)
            self.rm, self.rm_tokenizer, rm_base = load_reward_model(resolve_path(cfg, cfg.ppo.reward_model), trust_remote_code=cfg.model.trust_remote_code)
            self.same_tokens = rm_base.resolve() == ctx.policy.path.resolve() or _same_vocab(self.rm_tokenizer, ctx.tokenizer)
            self.name = f"reward model {cfg.ppo.reward_model}"
        else:
            self.fn = get_reward(cfg.ppo.reward_function, "ppo.reward_function")
            self.name = f"reward function {self.fn.name}"

    def scores(self, rows: list[Prompt], completions: list[list[int]], texts: list[str]) -> list[float]:
        if self.rm is None:
            return score_completions([self.fn], [p.text for p in rows], texts, [p.extra for p in rows])[0]
        if self.same_tokens:
            pairs = [(p.prompt_ids, c) for p, c in zip(rows, completions, strict=True)]
        else:
            eos = self.rm_tokenizer.eos_token_id
            pairs = [(self.rm_tokenizer.encode(p.text), [*self.rm_tokenizer.encode(t, add_special_tokens=False), eos]) for p, t in zip(rows, texts, strict=True)]
        pairs = [(p, c if c else [self.tokenizer.eos_token_id]) for p, c in pairs]
        return [float(s) for s in self.rm.score_rows(pairs).tolist()]


def _same_vocab(a: Any, b: Any) -> bool:
    probe = "sort: q c m f\nHello, world! 123"
    try:
        return list(a.encode(probe)) == list(b.encode(probe)) and a.eos_token_id == b.eos_token_id
    except Exception:  # noqa: BLE001
        return False


# ---------------------------------------------------------------- the algorithm


class Ppo(Algorithm):
    name = "ppo"
    supports_grad_accumulation = True  # each minibatch's update in token-weighted micro-batches (step 6)

    def setup(self, saved: dict[str, mx.array]) -> None:
        cfg, ctx = self.cfg, self.ctx
        require_sampling(cfg)
        self.source = ScoreSource(self)
        self.prompts, self.eval_prompts = self.read_data("prompts")
        per_rank = cfg.train.batch_size // ctx.world.size
        if per_rank < cfg.ppo.num_minibatches:
            raise ConfigError(f"ppo.num_minibatches = {cfg.ppo.num_minibatches} is more than the {per_rank} rollouts per rank and step (train.batch_size / ranks)")
        self.eos = eos_token_ids(ctx.tokenizer)
        self.reference = ReferencePolicy(ctx.model)
        value_lm = self._separate_value_model() if cfg.ppo.value_model == "separate" else None
        self.module = PolicyWithValue(ctx.model, value_lm, seed=cfg.train.seed)
        mx.eval(self.module.value_head.parameters())
        self.kl_ctl = AdaptiveKLController(cfg.ppo.kl_coef, cfg.ppo.target_kl, cfg.ppo.kl_horizon)
        self.rng = random.Random(cfg.train.seed * 7919 + 17)
        self.task = TaskScorer.from_config(cfg)
        ctx.log(f"ppo: scores from the {self.source.name}; value head on {'a separate copy of the base' if value_lm is not None else 'the policy trunk'}")

    def _separate_value_model(self) -> nn.Module:
        from engine.models import attach_trainable
        from engine.trained_model import load_start_model

        ctx = self.ctx
        ctx.phase("loading value model", 0, 0)
        acfg = dict(ctx.policy.adapter_config)
        # the base in model.dtype, started where the policy starts (model.init_from)
        lm, _, _, _, _ = load_start_model(str(ctx.policy.path), dtype=self.cfg.model.dtype, init_from=acfg.get("init_from") or "", trust_remote_code=self.cfg.model.trust_remote_code)
        attach_trainable(lm, acfg)
        return lm

    def trainable_module(self) -> nn.Module:
        return self.module

    # -------------------------------------------------------------- rollouts

    def _temperature(self) -> float:
        t = self.cfg.generation.temperature
        return t if t > 0 else 1.0

    def _rollout(self, prompts: list[Prompt], temperature: float) -> tuple[Any, list[str]]:
        return sample_completions(self.ctx, [p.prompt_ids for p in prompts], self.eos, temperature)

    def _score(self, prompts: list[Prompt], rollout: Any, texts: list[str]) -> list[float]:
        scores = self.source.scores(prompts, rollout.completion_ids, texts)
        penalty = self.cfg.ppo.missing_eos_penalty
        if penalty > 0:
            scores = [s - penalty if not done else s for s, done in zip(scores, rollout.finished, strict=True)]
        return scores

    # -------------------------------------------------------------- the loss

    def loss_fn(
        self,
        module: PolicyWithValue,
        tokens: mx.array,
        index: mx.array,
        mask: mx.array,
        targets: mx.array,
        old_logp: mx.array,
        old_values: mx.array,
        adv: mx.array,
        returns: mx.array,
    ) -> tuple[mx.array, dict[str, mx.array]]:
        p = self.cfg.ppo
        batch = CompletionBatch(tokens, index, mask, targets, [])
        logits, values = module(tokens[:, :-1])
        logp, ent = completion_logprobs(logits, batch, self._temperature())
        vpred = gather_positions(values, index)
        pg_loss, pg_stats = ppo_policy_loss(logp, old_logp, adv, mask, p.cliprange)
        vf_loss, vf_clipfrac = ppo_value_loss(vpred, old_values, returns, mask, p.cliprange_value)
        loss = pg_loss + p.vf_coef * vf_loss
        aux = {
            "loss/policy_avg": pg_loss,
            "loss/value_avg": vf_loss,
            "val/clipfrac_avg": vf_clipfrac,
            "policy/entropy_avg": masked_mean(ent, mask),
            **pg_stats,
        }
        return loss, {k: mx.stop_gradient(v) for k, v in aux.items()}

    # -------------------------------------------------------------- the step

    def train_step(self, step: int) -> StepResult:
        cfg, ctx, p = self.cfg, self.ctx, self.cfg.ppo
        prompts = [self.prompts[i] for i in self.order.next_indices()]
        rollout, texts = self._rollout(prompts, cfg.generation.temperature)
        scores_list = self._score(prompts, rollout, texts)
        scores = mx.array(scores_list, dtype=mx.float32)
        batch = completion_batch([q.prompt_ids for q in prompts], rollout.completion_ids, pad_id(ctx.tokenizer))
        mask = batch.mask

        ctx.phase("scoring rollouts", 0, 0)
        # one pass, or a micro-batch at a time with train.grad_accumulation_steps (less memory)
        parts = [mx.array(c) for c in ctx.micro_batches(list(range(batch.tokens.shape[0])))]
        subs = [CompletionBatch(batch.tokens[r], batch.index[r], mask[r], batch.targets[r], []) for r in parts]
        scored = []
        for sub in subs:
            logits, values = self.module(sub.tokens[:, :-1])
            lp, e = completion_logprobs(logits, sub, self._temperature())
            scored.append(tuple(mx.stop_gradient(a) for a in (lp, gather_positions(values, sub.index) * sub.mask, e)))
            mx.eval(scored[-1])
        with self.reference.active() as ref_model:
            for sub in subs:
                scored.append((mx.stop_gradient(completion_logprobs(ref_model(sub.tokens[:, :-1]), sub, self._temperature())[0]),))
                mx.eval(scored[-1])
        old_logp, old_values, ent = (mx.concatenate([s[i] for s in scored[: len(subs)]]) for i in range(3))
        ref_logp = mx.concatenate([s[0] for s in scored[len(subs) :]])

        kl = kl_per_token(old_logp, ref_logp, p.kl_estimator) * mask
        kl_coef = self.kl_ctl.value
        rewards, non_score = token_rewards(scores, kl, mask, kl_coef)
        adv, returns = gae(rewards, old_values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            adv = masked_whiten(adv, mask)
        adv = adv * mask
        mx.eval(adv, returns)

        n = batch.tokens.shape[0]
        mb_size = n // p.num_minibatches
        stats: list[dict[str, float]] = []
        losses, norms = [], []
        for _epoch in range(p.ppo_epochs):
            perm = list(range(n))
            self.rng.shuffle(perm)
            for m in range(p.num_minibatches):
                ctx.check()
                # train.grad_accumulation_steps: the minibatch in micro-batches, each weighted by
                # its share of the minibatch's tokens (the loss and its stats are token means)
                parts = [mx.array(c) for c in ctx.micro_batches(perm[m * mb_size : (m + 1) * mb_size])]
                counts = [float(mask[r].sum().item()) for r in parts]
                micro = [
                    (c / max(sum(counts), 1.0), (batch.tokens[r], batch.index[r], mask[r], batch.targets[r], old_logp[r], old_values[r], adv[r], returns[r]))
                    for r, c in zip(parts, counts, strict=True)
                ]
                loss, aux, norm = ctx.update_accumulated(self.loss_fn, micro)
                losses.append(loss)
                norms.append(norm)
                stats.append(aux)

        seq_kl = kl.sum(axis=1).mean().item()
        mean_non_score = non_score.sum(axis=1).mean().item()
        mean_score = scores.mean().item()
        if p.adaptive_kl:  # on the mean over ranks, so every rank keeps the same coefficient
            self.kl_ctl.update(ctx.world.mean({"kl": seq_kl})["kl"], cfg.train.batch_size)
        self._emit_samples(prompts, texts, scores_list, adv, mask)
        lengths = batch.lengths
        k = len(stats)
        extras: dict[str, Any] = {
            "objective/kl": seq_kl,
            "objective/entropy": ent.sum(axis=1).mean().item(),
            "objective/non_score_reward": mean_non_score,
            "objective/rlhf_reward": mean_score + mean_non_score,
            "objective/scores": mean_score,
            "kl_coef": kl_coef,
            "val/mean": masked_mean(old_values, mask).item(),
            "completions/mean_length": sum(lengths) / len(lengths),
            "completions/clipped_ratio": sum(1 for f in rollout.finished if not f) / len(lengths),
        }
        for key in stats[0]:
            extras[key] = sum(s[key] for s in stats) / k
        num_tokens = float(sum(len(q.prompt_ids) for q in prompts) + rollout.num_tokens)
        return StepResult(sum(losses) / k, sum(norms) / k, num_tokens, reward=mean_score, kl=seq_kl, extras=extras)

    def _emit_samples(self, prompts: list[Prompt], texts: list[str], scores: list[float], adv: mx.array, mask: mx.array) -> None:
        """The step's best and worst completion, with their mean token advantage."""
        mean_adv = ((adv * mask).sum(axis=1) / mx.maximum(mask.sum(axis=1), 1.0)).tolist()
        best = max(range(len(scores)), key=lambda i: scores[i])
        worst = min(range(len(scores)), key=lambda i: scores[i])
        for i in dict.fromkeys([best, worst]):
            self.ctx.sample(prompt=prompts[i].text, completion=texts[i], score=scores[i], advantage=mean_adv[i])

    def evaluate(self) -> dict[str, float]:
        if not self.eval_prompts:
            return {}
        scores: list[float] = []
        lengths: list[int] = []
        right: list[float] = []
        for start in range(0, len(self.eval_prompts), 64):
            part = self.eval_prompts[start : start + 64]
            rollout, texts = self._rollout(part, 0.0)
            scores.extend(self._score(part, rollout, texts))
            lengths.extend(len(c) for c in rollout.completion_ids)
            if self.task is not None:
                right.extend(self.task.correct([p.text for p in part], texts, rollout.finished, [p.extra for p in part]))
        out = {"reward": sum(scores) / len(scores), "completions/mean_length": sum(lengths) / len(lengths)}
        if right:
            out["task_score"] = sum(right) / len(right)
        return out

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.state_dict(), "kl_coef": self.kl_ctl.value, "rng": list(self.rng.getstate()[1]), "rng_pos": self.rng.getstate()[2]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state["order"])
        self.kl_ctl.value = float(state.get("kl_coef", self.kl_ctl.value))
        if "rng" in state:
            self.rng.setstate((3, tuple(state["rng"]), state.get("rng_pos")))

    def extra_arrays(self) -> dict[str, mx.array]:
        out = {"value_head.weight": self.module.value_head.weight, "value_head.bias": self.module.value_head.bias}
        if self.module.separate:
            out.update({f"value_model.{k}": v for k, v in tree_flatten(self.module.value_lm.trainable_parameters())})
        return out

    def load_extra_arrays(self, arrays: dict[str, mx.array]) -> None:
        self.module.value_head.weight = arrays["value_head.weight"]
        self.module.value_head.bias = arrays["value_head.bias"]
        if self.module.separate:
            vm = [(k[len("value_model.") :], v) for k, v in arrays.items() if k.startswith("value_model.")]
            self.module.value_lm.update(tree_unflatten(vm))

