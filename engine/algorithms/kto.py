"""KTO: Kahneman-Tversky optimisation on answers labelled good or bad (TRL's KTOTrainer).

Data: unpaired rows ``{"prompt": ..., "completion": ..., "label": true|false}`` in a local
JSONL/JSON file (read here: the first row having ``label`` makes the file unpaired), or any
preference data, which is unpaired here: each pair gives its chosen answer labelled
desirable and its rejected answer labelled undesirable.

With ``z = log pi(y|x) - log pi_ref(y|x)`` (summed over the answer's tokens) and ``KL`` the
batch's KL estimate — the mean of ``log pi - log pi_ref`` over *mismatched* pairs (each
prompt with the answer of the next example in the batch), clamped at 0, no gradient — the
loss of a desirable answer is ``desirable_weight * (1 - sigmoid(beta * (z - KL)))`` and of an
undesirable one ``undesirable_weight * (1 - sigmoid(beta * (KL - z)))``, averaged over the
batch. The reference policy is the starting weights, swapped in (no second model).

With ``train.grad_accumulation_steps = k`` the KL estimate keeps its whole-batch meaning:
it is computed (no gradient) over the step's whole batch — every row's mismatched answer,
as without accumulation, and averaged over ranks — before the loss is split over k
micro-batches of consecutive rows; each micro-batch uses that one estimate, and its loss
and metrics are divided by the whole batch's row and label counts, so the micro-batches
sum to the un-accumulated step exactly. (TRL's KTOTrainer, accumulating, estimates the KL
per micro-batch instead.) The no-gradient passes also run a micro-batch at a time.

Metrics (TRL names): ``kl`` (the estimate, also the panel's ``kl``), ``rewards/chosen`` and
``rewards/rejected`` (mean ``beta * z`` of desirable / undesirable answers),
``rewards/margins`` (their difference, the panel's ``reward``), ``logps/chosen``,
``logps/rejected``, ``count/chosen``, ``count/rejected``. Held out: the same, plus
``rewards/accuracies`` on eval pairs (preference eval data: the share whose chosen answer
has the higher implicit reward ``beta * z``) and ``task_score`` when ``data.task_reward``
is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import mlx.core as mx
import mlx.nn as nn

from engine.algorithms.base import Algorithm, StepResult
from engine.batching import BUCKET, collate
from engine.compile import compile_pays
from engine.data import LazyEncoded, encode, run_data
from engine.data_shapes import Record
from engine.errors import ConfigError, DataError
from engine.logprobs import shifted_token_logprobs
from engine.rollout import ReferencePolicy
from engine.task_eval import TaskPrompt, TaskScorer


@dataclass(frozen=True)
class LabelledAnswer:
    """One prompt and answer, labelled desirable (True) or undesirable (False)."""

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    desirable: bool
    prompt: str
    where: str


# ---------------------------------------------------------------- data


class UnpairedRows(Sequence[LabelledAnswer]):
    """A dataset's rows as labelled answers, tokenised on first use: labelled completions
    (``prompt``/``completion``/``label``) one each, preference pairs as a desirable (chosen)
    and an undesirable (rejected) answer — item ``2i`` and ``2i + 1`` of pair ``i``."""

    def __init__(self, records: Sequence[Record], encoder: Any) -> None:
        self.paired = bool(records) and records[0].rejected is not None
        self.per_row = 2 if self.paired else 1
        self.encoder = encoder
        self._rows = LazyEncoded(records, self._answers)  # each row tokenised once, when first used

    def __len__(self) -> int:
        return self.per_row * len(self._rows)

    def _answers(self, rec: Record) -> list[LabelledAnswer]:
        if self.paired:
            return unpair([encode(self.encoder, rec, "preference")])
        c = encode(self.encoder, rec, "sft")
        return [LabelledAnswer(c.prompt_ids, c.completion_ids, bool(rec.extra["label"]), c.prompt, rec.where)]  # type: ignore[union-attr]

    @overload
    def __getitem__(self, i: int) -> LabelledAnswer: ...
    @overload
    def __getitem__(self, i: slice) -> list[LabelledAnswer]: ...
    def __getitem__(self, i: int | slice) -> LabelledAnswer | list[LabelledAnswer]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self._rows[i // self.per_row][i % self.per_row]


def unpair(pairs: Any) -> list[LabelledAnswer]:
    """Each preference pair as a desirable (chosen) and an undesirable (rejected) answer."""
    out = []
    for p in pairs:
        out.append(LabelledAnswer(p.prompt_ids, p.chosen_ids, True, p.prompt, p.where))
        out.append(LabelledAnswer(p.prompt_ids, p.rejected_ids, False, p.prompt, p.where))
    return out


# ---------------------------------------------------------------- the loss


def kto_terms(
    logps: mx.array,
    ref_logps: mx.array,
    desirable: mx.array,
    kl: mx.array,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
    totals: tuple[float, float, float] | None = None,
) -> tuple[mx.array, dict[str, mx.array]]:
    """Loss and metrics from summed answer log-probs; ``desirable`` is 1.0 / 0.0 per row.

    ``totals``: (rows, desirable rows, undesirable rows) of the whole batch when these rows
    are one micro-batch of it; every value is then this micro-batch's share (``kl`` too), so
    the micro-batches' values sum to the whole batch's."""
    z = logps - ref_logps
    good_loss = 1 - mx.sigmoid(beta * (z - kl))
    bad_loss = 1 - mx.sigmoid(beta * (kl - z))
    losses = desirable * desirable_weight * good_loss + (1 - desirable) * undesirable_weight * bad_loss
    rewards = mx.stop_gradient(beta * z)
    n_good, n_bad = desirable.sum(), (1 - desirable).sum()
    n, all_good, all_bad = totals if totals is not None else (losses.size, n_good, n_bad)

    def mean_of(x: mx.array, w: mx.array, n: Any) -> mx.array:
        return (x * w).sum() / mx.maximum(n, 1.0)

    good_reward, bad_reward = mean_of(rewards, desirable, all_good), mean_of(rewards, 1 - desirable, all_bad)
    return losses.sum() / n, {
        "kl": kl if totals is None else kl * (losses.size / n),
        "rewards/chosen": good_reward,
        "rewards/rejected": bad_reward,
        "rewards/margins": good_reward - bad_reward,
        "logps/chosen": mean_of(mx.stop_gradient(logps), desirable, all_good),
        "logps/rejected": mean_of(mx.stop_gradient(logps), 1 - desirable, all_bad),
        "count/chosen": n_good,
        "count/rejected": n_bad,
    }


def kl_estimate(logps: mx.array, ref_logps: mx.array) -> mx.array:
    """TRL's batch KL: mean log-ratio on mismatched answers, clamped at 0, no gradient."""
    return mx.stop_gradient(mx.maximum((logps - ref_logps).mean(), 0.0))


def mismatched(rows: list[LabelledAnswer]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Each prompt with the answer of the previous example (rolled by one), as TRL's KL batch."""
    answers = [r.answer_ids for r in rows]
    answers = answers[-1:] + answers[:-1]
    return [(r.prompt_ids, a) for r, a in zip(rows, answers, strict=True)]


class Kto(Algorithm):
    name = "kto"
    supports_grad_accumulation = True  # whole-batch KL estimate, the loss split (module docstring)

    def setup(self, saved: dict[str, mx.array]) -> None:
        cfg, ctx = self.cfg, self.ctx
        ctx.phase("reading data", 0, 0)
        data = run_data(ctx)
        self.train = UnpairedRows(data.records("train", "unpaired"), data.encoder)
        evals = UnpairedRows(data.records("eval", "unpaired"), data.encoder)
        self.eval: list[LabelledAnswer] = list(evals)
        self.eval_pairs = evals.paired  # laid out as chosen, rejected: ranking accuracy is defined
        if not self.train:
            raise DataError(f"{cfg.data.train}: no training rows")
        if cfg.data.group_by_length:
            # the KL estimate pairs each answer with its neighbour's prompt in the batch; sorted by
            # length, the neighbour is often the same prompt's other answer, and batches lean to one label
            raise ConfigError("data.group_by_length = true does not suit KTO (its KL estimate pairs each answer with a neighbouring row's prompt, and length-sorted neighbours are often the same prompt's other answer): set it false")
        self.order = self.data_order(len(self.train))
        self.bucket = BUCKET if compile_pays(cfg.train.compile) else 1
        self.reference = ReferencePolicy(ctx.model)
        self.task = TaskScorer.from_config(cfg)

    # -------------------------------------------------------------- log-probs

    def _sums(self, model: nn.Module, tokens: mx.array, mask: mx.array) -> mx.array:
        lp, _ = shifted_token_logprobs(model, tokens)
        return (lp * mask).sum(axis=-1)

    def _no_grad_sums(self, model: nn.Module, rows: list[tuple[tuple[int, ...], tuple[int, ...]]], size: int | None = None) -> mx.array:
        out = []
        step = size or max(self.cfg.train.batch_size, 8)
        for start in range(0, len(rows), step):
            batch = collate(rows[start : start + step], bucket=self.bucket)
            out.append(mx.stop_gradient(self._sums(model, batch.tokens, batch.mask)))
            mx.eval(out[-1])
        return mx.concatenate(out) if out else mx.zeros((0,))

    def loss_fn(
        self,
        model: nn.Module,
        tokens: mx.array,
        mask: mx.array,
        ref: mx.array,
        desirable: mx.array,
        kl: mx.array,
        totals: tuple[float, float, float] | None = None,
    ) -> tuple[mx.array, dict[str, mx.array]]:
        k = self.cfg.kto
        return kto_terms(self._sums(model, tokens, mask), ref, desirable, kl, k.beta, k.desirable_weight, k.undesirable_weight, totals)

    def _batch_inputs(self, rows: list[LabelledAnswer], size: int | None = None) -> tuple[mx.array, mx.array, mx.array]:
        """(reference log-probs, labels, KL estimate) for the whole batch ``rows`` under the
        current weights; the no-gradient passes run ``size`` rows at a time."""
        pairs = [(r.prompt_ids, r.answer_ids) for r in rows]
        with self.reference.active() as ref_model:
            ref = self._no_grad_sums(ref_model, pairs, size)
            ref_kl = self._no_grad_sums(ref_model, mismatched(rows), size)
        kl = kl_estimate(self._no_grad_sums(self.ctx.model, mismatched(rows), size), ref_kl)
        kl = self.ctx.world.mean({"kl": float(kl.item())})["kl"]  # TRL gathers the estimate across processes
        desirable = mx.array([1.0 if r.desirable else 0.0 for r in rows])
        return ref, desirable, mx.array(kl, dtype=mx.float32)

    def train_step(self, step: int) -> StepResult:
        rows = [self.train[i] for i in self.order.next_indices()]
        chunks = self.ctx.micro_batches(rows)  # train.grad_accumulation_steps
        ref, desirable, kl = self._batch_inputs(rows, len(chunks[0]) if len(chunks) > 1 else None)
        good = sum(1.0 for r in rows if r.desirable)
        totals = (float(len(rows)), good, len(rows) - good)
        micro, num_tokens, start = [], 0, 0
        for chunk in chunks:
            batch = collate([(r.prompt_ids, r.answer_ids) for r in chunk], bucket=self.bucket)
            end = start + len(chunk)
            micro.append((1.0, (batch.tokens, batch.mask, ref[start:end], desirable[start:end], kl, totals)))  # shares: weights 1
            num_tokens += batch.num_tokens
            start = end
        loss, aux, norm = self.ctx.update_accumulated(self.loss_fn, micro)
        return StepResult(loss, norm, float(num_tokens), reward=aux["rewards/margins"], kl=aux.pop("kl"), extras=dict(aux))

    def evaluate(self) -> dict[str, float]:
        if not self.eval:
            return {}
        k = self.cfg.kto
        self.ctx.phase("evaluating", 0, 0)
        pairs = [(r.prompt_ids, r.answer_ids) for r in self.eval]
        logps = self._no_grad_sums(self.ctx.model, pairs)
        kl_pol = self._no_grad_sums(self.ctx.model, mismatched(self.eval))
        with self.reference.active() as ref_model:
            ref = self._no_grad_sums(ref_model, pairs)
            ref_kl = self._no_grad_sums(ref_model, mismatched(self.eval))
        desirable = mx.array([1.0 if r.desirable else 0.0 for r in self.eval])
        loss, aux = kto_terms(logps, ref, desirable, kl_estimate(kl_pol, ref_kl), k.beta, k.desirable_weight, k.undesirable_weight)
        out = {"loss": loss, **aux}
        if self.eval_pairs:  # unpair() laid each pair out as chosen, rejected
            rewards = (logps - ref).reshape(-1, 2)
            out["rewards/accuracies"] = (rewards[:, 0] > rewards[:, 1]).astype(mx.float32).mean()
        metrics = {key: float(v.item()) for key, v in out.items()}
        metrics["reward"] = metrics["rewards/margins"]
        if self.task is not None:
            metrics.update(self.task.evaluate(self.ctx, [TaskPrompt(r.prompt_ids, r.prompt) for r in self.eval]))
        return metrics
