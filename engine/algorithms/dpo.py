"""Direct Preference Optimization with TRL's loss variants.

Log-probs are summed over completion tokens only (the prompt is masked). The reference
policy's log-probs are computed once for every pair before the first update, when the
policy still *is* the reference, and kept in the run directory: no second model is held
in memory, whatever ``model.adapter`` is.

Panel keys: ``reward`` is the mean implicit reward margin (``rewards/margins``); ``kl`` is
the k2 estimate ``r**2 / 2`` of the mean per-token log-ratio ``r`` over chosen and
rejected answers (never negative; measured on the data, not on samples from the policy);
``logratio`` keeps the raw mean sequence log-ratio, which can be negative.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.algorithms.base import Algorithm
from engine.batching import (
    BUCKET,
    DataOrder,
    SharedPromptBatch,
    TokenBatch,
    collate,
    collate_shared,
)
from engine.compile import compile_pays, enable_grad_checkpoint
from engine.config import resolve_path
from engine.data import PreferencePair, load_pairs
from engine.logprobs import shared_prompt_logprobs, shifted_token_logprobs, supports_shared_prompt
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
    """The model input for ``pairs``: chosen answers first, then rejected ones."""
    if shared:
        return collate_shared([p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs], bucket=bucket)
    return collate(pair_rows(pairs), bucket=bucket)


def pair_rows(pairs: list[PreferencePair]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Chosen rows first, then rejected rows, as (prompt, completion) token tuples."""
    return [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]


class Dpo(Algorithm):
    name = "dpo"
    compilable = True  # loss_fn reads nothing back to the host and its shapes are bucketed

    def setup(self, saved: dict[str, mx.array]) -> None:
        cfg, ctx = self.cfg, self.ctx
        ctx.phase("reading data", 0, 0)
        self.train = load_pairs(resolve_path(cfg, cfg.data.train), ctx.tokenizer, cfg.model.max_length, "train")
        self.eval: list[PreferencePair] = []
        if cfg.data.eval:
            self.eval = load_pairs(resolve_path(cfg, cfg.data.eval), ctx.tokenizer, cfg.model.max_length, "eval")[: cfg.data.max_eval_examples]
        per_rank = cfg.train.batch_size // ctx.world.size
        self.order = DataOrder(len(self.train), cfg.train.batch_size, cfg.train.seed, cfg.data.shuffle, ctx.world.rank, ctx.world.size)
        self.per_rank = per_rank
        self.average = cfg.dpo.loss_type == "ipo"
        if cfg.train.grad_checkpoint:
            enable_grad_checkpoint(ctx.model)
        # length buckets keep a compiled step from recompiling; an eager step pads only to the batch's longest row
        self.bucket = BUCKET if compile_pays(cfg.train.compile) else 1
        self.task = TaskScorer.from_config(cfg)
        everything = self.train + self.eval
        self.shared = SHARE_PROMPT and supports_shared_prompt(ctx.model) and all(p.prompt_ids and p.chosen_ids and p.rejected_ids for p in everything)
        if "ref_train" in saved and saved["ref_train"].shape[0] == len(self.train):
            self.ref_train = saved["ref_train"]
            self.ref_eval = saved.get("ref_eval", mx.zeros((0, 2)))
        else:
            ctx.log(f"computing reference log-probs for {len(self.train) + len(self.eval)} pairs (once; kept in the run directory)")
            self.ref_train = self.score(self.train, "reference log-probs")
            self.ref_eval = self.score(self.eval, "reference log-probs (eval)") if self.eval else mx.zeros((0, 2))

    def run_arrays(self) -> dict[str, mx.array]:
        return {"ref_train": self.ref_train, "ref_eval": self.ref_eval}

    # -------------------------------------------------------------- log-probs

    def _logps(self, model: nn.Module, tokens: mx.array, mask: mx.array, prompts: mx.array | None = None, prompt_pad: mx.array | None = None) -> tuple[mx.array, mx.array]:
        """Summed (or, for ipo, averaged) answer log-probs per row, and the logits behind them.

        Plain batches: ``tokens`` are [prompt, answer] rows. Shared-prompt batches: ``tokens``
        are the answers alone and ``prompts``/``prompt_pad`` the left-padded prompts.
        """
        if prompts is not None and prompt_pad is not None:
            lp, logits = shared_prompt_logprobs(model, prompts, prompt_pad, tokens)
        else:
            lp, logits = shifted_token_logprobs(model, tokens)
        summed = (lp * mask).sum(axis=-1)
        if self.average:
            summed = summed / mx.maximum(mask.sum(axis=-1), 1.0)
        return summed, logits

    def score(self, pairs: list[PreferencePair], phase: str) -> mx.array:
        """[N, 2] (chosen, rejected) log-probs under the current weights, no gradients.

        With several ranks each scores a share and every rank gets all N rows."""
        return self.ctx.world.gather_sharded(len(pairs), lambda idx: self._score_rows([pairs[i] for i in idx], phase))

    def _score_rows(self, pairs: list[PreferencePair], phase: str) -> mx.array:
        out = []
        step = max(self.cfg.train.batch_size, 8)
        for start in range(0, len(pairs), step):
            self.ctx.check()
            chunk = pairs[start : start + step]
            logps, _ = self._logps(self.ctx.model, *self._inputs(pair_batch(chunk, self.shared, self.bucket)))
            logps = mx.stop_gradient(logps)
            n = len(chunk)
            out.append(mx.stack([logps[:n], logps[n:]], axis=1))
            mx.eval(out[-1])
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
        logps, logits = self._logps(model, tokens, mask, prompts, prompt_pad)
        n = ref.shape[0]
        pc, pr = logps[:n], logps[n:]
        rc, rr = ref[:, 0], ref[:, 1]
        losses = dpo_losses(pc, pr, rc, rr, d.beta, d.loss_type, d.label_smoothing)
        chosen_rewards = mx.stop_gradient(d.beta * (pc - rc))
        rejected_rewards = mx.stop_gradient(d.beta * (pr - rr))
        tok_mask = mask[..., None]
        mean_logits = mx.stop_gradient((logits * tok_mask).sum(axis=(1, 2)) / mx.maximum(mask.sum(axis=1) * logits.shape[-1], 1.0))
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

    def train_step(self, step: int) -> dict[str, float]:
        idx = self.order.next_indices()
        pairs = [self.train[i] for i in idx]
        batch = pair_batch(pairs, self.shared, self.bucket)
        ref = self.ref_train[mx.array(idx)]
        loss, aux, norm = self.ctx.update(self.loss_fn, ref, *self._inputs(batch))
        return {
            "loss": loss,
            "grad_norm": norm,
            "reward": aux["rewards/margins"],
            "num_tokens": float(batch.num_tokens),
            **aux,
        }

    def evaluate(self) -> dict[str, float]:
        if not self.eval:
            return {}
        d = self.cfg.dpo
        logps = self.score(self.eval, "evaluating")
        pc, pr = logps[:, 0], logps[:, 1]
        rc, rr = self.ref_eval[:, 0], self.ref_eval[:, 1]
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

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state["order"])
