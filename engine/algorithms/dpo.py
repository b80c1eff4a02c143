"""Direct Preference Optimization with TRL's loss variants.

Log-probs are summed over completion tokens only (the prompt is masked). The reference
policy's log-probs are computed for a batch when it is first used, under the run's initial
weights swapped in (LoRA: the adapters as they started, so no second model is held; full
fine-tuning: one kept copy of the initial weights), and cached on disk by content
(:mod:`engine.reference_cache`): the first step comes as soon on 60,000 pairs as on 60,
and a resume or a second epoch reuses them. ``dpo.precompute_ref_log_probs`` computes
them all before the first step instead (TRL's option; no initial copy is kept).

Panel keys: ``reward`` is the mean implicit reward margin (``rewards/margins``); ``kl`` is
the k2 estimate ``r**2 / 2`` of the mean per-token log-ratio ``r`` over chosen and
rejected answers (never negative; measured on the data, not on samples from the policy);
``logratio`` keeps the raw mean sequence log-ratio, which can be negative.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from engine.algorithms.base import Algorithm, StepResult
from engine.batching import (
    BUCKET,
    SharedPromptBatch,
    TokenBatch,
    collate,
    collate_shared,
)
from engine.compile import compile_pays
from engine.data import PreferencePair
from engine.logprobs import shared_prompt_stats, shifted_token_stats, supports_shared_prompt
from engine.reference_cache import FILE_NAME as REFERENCE_FILE
from engine.reference_cache import ReferenceCache, model_identity, pair_key
from engine.rollout import ReferencePolicy
from engine.task_eval import TaskPrompt, TaskScorer

# Run each prompt once for both answers where the model allows it (same log-probs, less
# work: see engine.logprobs.shared_prompt_logprobs). Benchmarks turn it off to compare.
SHARE_PROMPT = True


def dpo_losses(
    policy_chosen: mx.array,
    policy_rejected: mx.array,
    ref_chosen: mx.array,
    ref_rejected: mx.array,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> mx.array:
    """Per-pair DPO loss from sequence log-probs (TRL's definitions)."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    logits = chosen_ratio - rejected_ratio
    ls = label_smoothing
    if loss_type == "sigmoid":
        return -nn.log_sigmoid(beta * logits) * (1 - ls) - nn.log_sigmoid(-beta * logits) * ls
    if loss_type == "robust":
        return (-nn.log_sigmoid(beta * logits) * (1 - ls) + nn.log_sigmoid(-beta * logits) * ls) / (1 - 2 * ls)
    if loss_type == "hinge":
        return nn.relu(1 - beta * logits)
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    if loss_type == "apo_zero":
        return (1 - mx.sigmoid(beta * chosen_ratio)) + mx.sigmoid(beta * rejected_ratio)
    if loss_type == "apo_down":
        return mx.sigmoid(beta * chosen_ratio) + (1 - mx.sigmoid(beta * logits))
    if loss_type == "sppo_hard":
        return (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2
    if loss_type == "nca_pair":
        cr, rr = beta * chosen_ratio, beta * rejected_ratio
        return -nn.log_sigmoid(cr) - 0.5 * nn.log_sigmoid(-cr) - 0.5 * nn.log_sigmoid(-rr)
    raise ValueError(f"unknown DPO loss_type {loss_type!r}")


def data_kl(
    policy_chosen: mx.array,
    policy_rejected: mx.array,
    ref_chosen: mx.array,
    ref_rejected: mx.array,
    tokens_chosen: mx.array,
    tokens_rejected: mx.array,
) -> mx.array:
    """A never-negative KL estimate on the data's answers (the panel's ``kl`` for DPO).

    For each answer, ``r`` is the mean per-token log-ratio ``(log pi_ref - log pi) / T``;
    the k2 estimator ``r**2 / 2`` of each is averaged over chosen and rejected. It is 0
    while the policy equals the reference and grows as it moves away, in either direction.

    Not k3 (``exp(r) - 1 - r``): DPO drives the rejected answers' log-probs far down, so
    ``r`` reaches several nats a token and k3 grows exponentially; on the built-in default
    it went 1 -> 3,000 in 50 steps, one displaced answer swamping the mean and the chart.
    """
    r_c = (ref_chosen - policy_chosen) / mx.maximum(tokens_chosen, 1.0)
    r_r = (ref_rejected - policy_rejected) / mx.maximum(tokens_rejected, 1.0)
    return (mx.square(r_c).mean() + mx.square(r_r).mean()) / 4


def pair_batch(pairs: list[PreferencePair], shared: bool, bucket: int = BUCKET) -> TokenBatch | SharedPromptBatch:
    """The model input for ``pairs``: chosen answers first, then rejected ones (each prompt
    run once when ``shared`` and every row has a prompt and answers)."""
    if shared and all(p.prompt_ids and p.chosen_ids and p.rejected_ids for p in pairs):
        return collate_shared([p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs], bucket=bucket)
    return collate(pair_rows(pairs), bucket=bucket)


def pair_rows(pairs: list[PreferencePair]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Chosen rows first, then rejected rows, as (prompt, completion) token tuples."""
    return [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]


class Dpo(Algorithm):
    supports_grad_accumulation = True
    name = "dpo"
    compilable = True  # loss_fn reads nothing back to the host and its shapes are bucketed

    def setup(self, saved: dict[str, mx.array]) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.train, self.eval = self.read_data("pairs")
        per_rank = cfg.train.batch_size // ctx.world.size
        self.per_rank = per_rank
        self.average = cfg.dpo.loss_type == "ipo"
        # length buckets keep a compiled step from recompiling; an eager step pads only to the batch's longest row
        self.bucket = BUCKET if compile_pays(cfg.train.compile) else 1
        self.task = TaskScorer.from_config(cfg)
        self.shared = SHARE_PROMPT and supports_shared_prompt(ctx.model)
        # reference log-probs: computed for a batch when it is first used (under the
        # initial weights, swapped in), cached on disk by content (engine.reference_cache)
        run_dir = getattr(ctx, "run_dir", None)
        path = run_dir / REFERENCE_FILE if run_dir is not None and ctx.world.is_main else None
        self.ref_cache = ReferenceCache(path)
        self.ref_model_id = model_identity(cfg, {"average": self.average})
        self.reference = ReferencePolicy(ctx.model)
        if self.ref_cache.loaded:
            ctx.log(f"reference log-probs: {self.ref_cache.loaded:,} pairs cached in {REFERENCE_FILE}")
        if cfg.dpo.precompute_ref_log_probs:
            ctx.log(f"computing reference log-probs for {len(self.train) + len(self.eval):,} pairs before the first step (dpo.precompute_ref_log_probs)")
            self.reference_logps(list(self.train), "reference log-probs")
            if self.eval:
                self.reference_logps(self.eval, "reference log-probs (eval)")
            self.reference = None  # every value is cached: no initial weights to keep

    def run_arrays(self) -> dict[str, mx.array]:
        return {}

    def reference_logps(self, pairs: list[PreferencePair], phase: str = "") -> mx.array:
        """[N, 2] reference (chosen, rejected) log-probs, computing only what is not cached."""
        keys = [pair_key(self.ref_model_id, p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]

        def compute(positions: list[int]) -> list[tuple[float, float]]:
            if self.reference is None:
                raise RuntimeError("reference weights were released after precomputing; a pair was not in the cache")
            todo = [pairs[i] for i in positions]
            with self.reference.active() as model:
                values = self._score_rows(todo, phase, model=model)
            return [(float(c), float(r)) for c, r in values.tolist()]

        return mx.array(self.ref_cache.fill(keys, compute), dtype=mx.float32).reshape(len(pairs), 2)

    # -------------------------------------------------------------- log-probs

    def _logps(self, model: nn.Module, tokens: mx.array, mask: mx.array, prompts: mx.array | None = None, prompt_pad: mx.array | None = None) -> tuple[mx.array, mx.array]:
        """Summed (or, for ipo, averaged) answer log-probs per row, and the mean logit per position.

        Plain batches: ``tokens`` are [prompt, answer] rows. Shared-prompt batches: ``tokens``
        are the answers alone and ``prompts``/``prompt_pad`` the left-padded prompts.
        """
        # chunked output layer: (log-prob, mean logit) per position, no [rows, T, V] float32 logits
        if prompts is not None and prompt_pad is not None:
            lp, mean_logit = shared_prompt_stats(model, prompts, prompt_pad, tokens)
        else:
            lp, mean_logit = shifted_token_stats(model, tokens)
        summed = (lp * mask).sum(axis=-1)
        if self.average:
            summed = summed / mx.maximum(mask.sum(axis=-1), 1.0)
        return summed, mean_logit

    def score(self, pairs: list[PreferencePair], phase: str) -> mx.array:
        """[N, 2] (chosen, rejected) log-probs under the current weights, no gradients.

        With several ranks each scores a share and every rank gets all N rows."""
        return self.ctx.world.gather_sharded(len(pairs), lambda idx: self._score_rows([pairs[i] for i in idx], phase))

    def _score_rows(self, pairs: list[PreferencePair], phase: str, model: nn.Module | None = None) -> mx.array:
        model = self.ctx.model if model is None else model
        out = []
        step = max(self.cfg.train.batch_size, 8)
        for start in range(0, len(pairs), step):
            self.ctx.check()
            chunk = pairs[start : start + step]
            logps, _ = self._logps(model, *self._inputs(pair_batch(chunk, self.shared, self.bucket)))
            logps = mx.stop_gradient(logps)
            n = len(chunk)
            out.append(mx.stack([logps[:n], logps[n:]], axis=1))
            mx.eval(out[-1])
            if phase and len(pairs) > step:
                self.ctx.phase(phase, min(start + step, len(pairs)), len(pairs))
        return mx.concatenate(out, axis=0) if out else mx.zeros((0, 2))

    # -------------------------------------------------------------- training

    @staticmethod
    def _inputs(batch: TokenBatch | SharedPromptBatch) -> tuple[mx.array, ...]:
        if isinstance(batch, SharedPromptBatch):
            return batch.answers, batch.mask, batch.prompts, batch.prompt_pad
        return batch.tokens, batch.mask

    def loss_fn(
        self, model: nn.Module, ref: mx.array, tokens: mx.array, mask: mx.array, prompts: mx.array | None = None, prompt_pad: mx.array | None = None
    ) -> tuple[mx.array, dict[str, mx.array]]:
        d = self.cfg.dpo
        logps, mean_logit = self._logps(model, tokens, mask, prompts, prompt_pad)
        n = ref.shape[0]
        pc, pr = logps[:n], logps[n:]
        rc, rr = ref[:, 0], ref[:, 1]
        losses = dpo_losses(pc, pr, rc, rr, d.beta, d.loss_type, d.label_smoothing)
        chosen_rewards = mx.stop_gradient(d.beta * (pc - rc))
        rejected_rewards = mx.stop_gradient(d.beta * (pr - rr))
        mean_logits = mx.stop_gradient((mean_logit * mask).sum(axis=1) / mx.maximum(mask.sum(axis=1), 1.0))
        aux = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(mx.float32).mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": mx.stop_gradient(pc).mean(),
            "logps/rejected": mx.stop_gradient(pr).mean(),
            "logits/chosen": mean_logits[:n].mean(),
            "logits/rejected": mean_logits[n:].mean(),
            "kl": mx.stop_gradient(data_kl(pc, pr, rc, rr, *self._answer_lengths(mask, n))),
            "logratio": mx.stop_gradient(((pc - rc) + (pr - rr)) / 2).mean(),
        }
        return losses.mean(), aux

    def _answer_lengths(self, mask: mx.array, n: int) -> tuple[mx.array, mx.array]:
        """Answer token counts (chosen, rejected); 1 for ipo, whose log-probs are per-token means."""
        if self.average:
            ones = mx.ones((n,))
            return ones, ones
        counts = mask.sum(axis=-1)
        return counts[:n], counts[n:]

    def _eval_lengths(self) -> tuple[mx.array, mx.array]:
        if self.average:
            ones = mx.ones((len(self.eval),))
            return ones, ones
        return (mx.array([float(len(p.chosen_ids)) for p in self.eval]), mx.array([float(len(p.rejected_ids)) for p in self.eval]))

    def train_step(self, step: int) -> StepResult:
        pairs = [self.train[i] for i in self.order.next_indices()]
        micro, num_tokens = [], 0
        for chunk in self.ctx.micro_batches(pairs):  # train.grad_accumulation_steps
            batch = pair_batch(chunk, self.shared, self.bucket)
            micro.append((len(chunk) / len(pairs), (self.reference_logps(chunk), *self._inputs(batch))))
            num_tokens += batch.num_tokens
        loss, aux, norm = self.ctx.update_accumulated(self.loss_fn, micro)
        return StepResult(loss, norm, float(num_tokens), reward=aux["rewards/margins"], kl=aux.pop("kl"), extras=dict(aux))

    def evaluate(self) -> dict[str, float]:
        if not self.eval:
            return {}
        d = self.cfg.dpo
        logps = self.score(self.eval, "evaluating")
        pc, pr = logps[:, 0], logps[:, 1]
        ref = self.ctx.world.gather_sharded(len(self.eval), lambda idx: self.reference_logps([self.eval[i] for i in idx], "reference log-probs (eval)"))
        rc, rr = ref[:, 0], ref[:, 1]
        losses = dpo_losses(pc, pr, rc, rr, d.beta, d.loss_type, d.label_smoothing)
        cr, rj = d.beta * (pc - rc), d.beta * (pr - rr)
        out = {
            "loss": losses.mean(),
            "rewards/chosen": cr.mean(),
            "rewards/rejected": rj.mean(),
            "rewards/accuracies": (cr > rj).astype(mx.float32).mean(),
            "rewards/margins": (cr - rj).mean(),
            "logps/chosen": pc.mean(),
            "logps/rejected": pr.mean(),
            "kl": data_kl(pc, pr, rc, rr, *self._eval_lengths()),
            "logratio": (((pc - rc) + (pr - rr)) / 2).mean(),
        }
        metrics = {k: float(v.item()) for k, v in out.items()}
        metrics["reward"] = metrics["rewards/margins"]
        if self.task is not None:
            metrics.update(self.task.evaluate(self.ctx, [TaskPrompt(p.prompt_ids, p.prompt) for p in self.eval]))
        return metrics
