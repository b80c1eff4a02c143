"""What reference-free preference losses (ORPO, SimPO, CPO) share: pairs in, per-answer
log-prob sums out, a loss from those sums, and a held-out ranking accuracy.

A subclass implements :meth:`PairLoss.pair_loss`, which turns per-pair sums (chosen and
rejected summed log-probs and answer token counts) into the loss and its metrics. The
model runs inside the loss function given to ``ctx.update`` (``nn.value_and_grad``), so
gradients reach the weights.

Held-out rows: the loss's own metrics on data.eval, plus ``rewards/accuracies``, the share
of eval pairs whose chosen answer has the higher length-normalised log-prob (mean
per-token log-prob), the implicit reward these losses rank by, and ``task_score`` when
``data.task_reward`` names the task (engine.task_eval).
"""

from __future__ import annotations

from abc import abstractmethod

import mlx.core as mx
import mlx.nn as nn

from engine.algorithms.base import Algorithm, StepResult
from engine.algorithms.dpo import SHARE_PROMPT, pair_batch
from engine.batching import BUCKET, SharedPromptBatch, TokenBatch
from engine.compile import compile_pays
from engine.data import PreferencePair
from engine.logprobs import shared_prompt_logprobs, shifted_token_logprobs, supports_shared_prompt
from engine.task_eval import TaskPrompt, TaskScorer


def answer_logps(model: nn.Module, tokens: mx.array, mask: mx.array, prompts: mx.array | None = None, prompt_pad: mx.array | None = None) -> tuple[mx.array, mx.array]:
    """(summed answer log-probs, answer token counts) per row of a pair batch."""
    if prompts is not None and prompt_pad is not None:
        lp, _ = shared_prompt_logprobs(model, prompts, prompt_pad, tokens)
    else:
        lp, _ = shifted_token_logprobs(model, tokens)
    return (lp * mask).sum(axis=-1), mask.sum(axis=-1)


def batch_inputs(batch: TokenBatch | SharedPromptBatch) -> tuple[mx.array, ...]:
    if isinstance(batch, SharedPromptBatch):
        return batch.answers, batch.mask, batch.prompts, batch.prompt_pad
    return batch.tokens, batch.mask


def normalised_accuracy(chosen_sum: mx.array, rejected_sum: mx.array, chosen_n: mx.array, rejected_n: mx.array) -> mx.array:
    """Share of pairs whose chosen answer has the higher mean per-token log-prob."""
    return (chosen_sum / mx.maximum(chosen_n, 1.0) > rejected_sum / mx.maximum(rejected_n, 1.0)).astype(mx.float32).mean()


class PairLoss(Algorithm):
    """A preference loss on the policy's own log-probs of chosen and rejected answers."""

    supports_grad_accumulation = True

    @abstractmethod
    def pair_loss(self, chosen_sum: mx.array, rejected_sum: mx.array, chosen_n: mx.array, rejected_n: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
        """(scalar loss, metrics as scalars) from per-pair sums; metrics include ``rewards/margins``."""

    def setup(self, saved: dict[str, mx.array]) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.train, self.eval = self.read_data("pairs")
        self.bucket = BUCKET if compile_pays(cfg.train.compile) else 1
        self.task = TaskScorer.from_config(cfg)
        self.shared = SHARE_PROMPT and supports_shared_prompt(ctx.model)

    def loss_fn(self, model: nn.Module, n: int, *inputs: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
        sums, counts = answer_logps(model, *inputs)
        loss, aux = self.pair_loss(sums[:n], sums[n:], counts[:n], counts[n:])
        return loss, {k: mx.stop_gradient(v) for k, v in aux.items()}

    def train_step(self, step: int) -> StepResult:
        pairs = [self.train[i] for i in self.order.next_indices()]
        micro, num_tokens = [], 0
        for chunk in self.ctx.micro_batches(pairs):  # train.grad_accumulation_steps
            batch = pair_batch(chunk, self.shared, self.bucket)
            micro.append((len(chunk) / len(pairs), (len(chunk), *batch_inputs(batch))))
            num_tokens += batch.num_tokens
        loss, aux, norm = self.ctx.update_accumulated(self.loss_fn, micro)
        return StepResult(loss, norm, float(num_tokens), reward=aux["rewards/margins"], extras=dict(aux))

    def score(self, pairs: list[PreferencePair]) -> tuple[mx.array, mx.array]:
        """[N, 2] summed log-probs and [N, 2] token counts (chosen, rejected), no gradients."""

        def rows(idx: list[int]) -> mx.array:
            out = []
            step = max(self.cfg.train.batch_size, 8)
            chunk_all = [pairs[i] for i in idx]
            for start in range(0, len(chunk_all), step):
                self.ctx.check()
                chunk = chunk_all[start : start + step]
                sums, counts = answer_logps(self.ctx.model, *batch_inputs(pair_batch(chunk, self.shared, self.bucket)))
                n = len(chunk)
                out.append(mx.stop_gradient(mx.stack([sums[:n], sums[n:], counts[:n], counts[n:]], axis=1)))
                mx.eval(out[-1])
                self.ctx.phase("evaluating", min(start + step, len(chunk_all)), len(chunk_all))
            return mx.concatenate(out, axis=0) if out else mx.zeros((0, 4))

        both = self.ctx.world.gather_sharded(len(pairs), rows)
        return both[:, :2], both[:, 2:]

    def evaluate(self) -> dict[str, float]:
        if not self.eval:
            return {}
        sums, counts = self.score(self.eval)
        loss, aux = self.pair_loss(sums[:, 0], sums[:, 1], counts[:, 0], counts[:, 1])
        out = {"loss": loss, **aux, "rewards/accuracies": normalised_accuracy(sums[:, 0], sums[:, 1], counts[:, 0], counts[:, 1])}
        metrics = {k: float(v.item()) for k, v in out.items()}
        metrics["reward"] = metrics["rewards/margins"]
        if self.task is not None:
            metrics.update(self.task.evaluate(self.ctx, [TaskPrompt(p.prompt_ids, p.prompt) for p in self.eval]))
        return metrics
