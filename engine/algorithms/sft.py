"""Supervised fine-tuning: cross-entropy on completion tokens (prompt masked by default).

Panel keys: ``reward`` is the mean token accuracy on completion tokens; ``kl`` is null
(SFT has no reference policy).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from engine.algorithms.base import Algorithm, StepResult
from engine.batching import collate
from engine.data import Completion
from engine.logprobs import shifted_token_logprobs
from engine.task_eval import TaskScorer, from_ids


class Sft(Algorithm):
    name = "sft"
    supports_grad_accumulation = True
    # loss_fn reads nothing back to the host and collate buckets its lengths; on an H200
    # (1B 4-bit LoRA, 1 x 1,024 tokens, checkpointed) compiling made the step 0.164 -> 0.099 s
    # and its peak 7.96 -> 5.27 GB above the resting weights (docs/performance.md)
    compilable = True

    def setup(self, saved: dict[str, mx.array]) -> None:
        cfg = self.cfg
        self.train, self.eval = self.read_data("completions")
        self.task = TaskScorer.from_config(cfg)

    def _rows(self, items: list[Completion]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        if self.cfg.sft.mask_prompt:
            return [(c.prompt_ids, c.completion_ids) for c in items]
        return [(c.prompt_ids[:1], c.prompt_ids[1:] + c.completion_ids) for c in items]

    def loss_fn(self, model: nn.Module, tokens: mx.array, mask: mx.array, share: mx.array | None = None) -> tuple[mx.array, dict[str, mx.array]]:
        """Mean token loss. ``share``: the global token count / ranks, so that the ranks'
        averaged gradients equal one process's on the whole batch (ranks hold unequal tokens)."""
        lp, logits = shifted_token_logprobs(model, tokens)
        n = mx.maximum(mask.sum() if share is None else share, 1.0)
        loss = -(lp * mask).sum() / n
        correct = (mx.argmax(logits, axis=-1) == tokens[:, 1:]).astype(mx.float32)
        acc = mx.stop_gradient((correct * mask).sum() / n)
        return loss, {"mean_token_accuracy": acc}

    def train_step(self, step: int) -> StepResult:
        items = [self.train[i] for i in self.order.next_indices()]
        chunks = self.ctx.micro_batches(items)  # train.grad_accumulation_steps
        world = self.ctx.world
        if len(chunks) == 1:
            batch = collate(self._rows(items))
            share = mx.array(world.sum(float(batch.completion_tokens)) / world.size) if world.size > 1 else None
            micro = [(1.0, (batch.tokens, batch.mask, share))]
            num_tokens = batch.num_tokens
        else:  # each micro-batch's token sum over the whole batch's (global) token count
            batches = [collate(self._rows(c)) for c in chunks]
            share = mx.array(world.sum(float(sum(b.completion_tokens for b in batches))) / world.size)
            micro = [(1.0, (b.tokens, b.mask, share)) for b in batches]
            num_tokens = sum(b.num_tokens for b in batches)
        loss, aux, norm = self.ctx.update_accumulated(self.loss_fn, micro)
        return StepResult(loss, norm, float(num_tokens), reward=aux["mean_token_accuracy"], extras=dict(aux))

    def evaluate(self) -> dict[str, float]:
        if not self.eval:
            return {}
        total_loss = total_acc = total_n = 0.0
        step = max(self.cfg.train.batch_size, 8)
        for start in range(0, len(self.eval), step):
            self.ctx.check()
            batch = collate(self._rows(self.eval[start : start + step]))
            loss, aux = self.loss_fn(self.ctx.model, batch.tokens, batch.mask)
            n = float(batch.mask.sum().item())
            total_loss += float(loss.item()) * n
            total_acc += float(aux["mean_token_accuracy"].item()) * n
            total_n += n
            self.ctx.phase("evaluating", min(start + step, len(self.eval)), len(self.eval))
        acc = total_acc / max(total_n, 1.0)
        out = {"loss": total_loss / max(total_n, 1.0), "mean_token_accuracy": acc, "reward": acc}
        if self.task is not None:
            out.update(self.task.evaluate(self.ctx, from_ids(self.ctx.tokenizer, [c.prompt_ids for c in self.eval])))
        return out
