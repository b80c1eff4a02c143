"""Log-probability math shared by every algorithm, always in float32."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def token_logprobs(logits: mx.array, targets: mx.array) -> mx.array:
    """log p(target) per position, computed with a float32 log-softmax. Shapes [N, T, V], [N, T]."""
    logits = logits.astype(mx.float32)
    logz = mx.logsumexp(logits, axis=-1)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return picked - logz


def shifted_token_logprobs(model: nn.Module, tokens: mx.array) -> tuple[mx.array, mx.array]:
    """Run ``model`` on ``tokens[:, :-1]``; return (log p(tokens[:, 1:]), logits) in float32."""
    logits = model(tokens[:, :-1]).astype(mx.float32)
    return token_logprobs(logits, tokens[:, 1:]), logits


def sequence_logprobs(model: nn.Module, tokens: mx.array, mask: mx.array) -> mx.array:
    """Sum of completion-token log-probs per row; ``mask`` [N, T-1] marks the completion targets."""
    lp, _ = shifted_token_logprobs(model, tokens)
    return (lp * mask).sum(axis=-1)


def entropy_from_logits(logits: mx.array) -> mx.array:
    """Per-position entropy of the softmax distribution, in nats (float32)."""
    logits = logits.astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return -(mx.exp(logp) * logp).sum(axis=-1)
