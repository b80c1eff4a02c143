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


# ---------------------------------------------------------------- shared-prompt scoring
#
# Chosen and rejected answers share their prompt. Instead of running the model on
# [prompt, chosen] and [prompt, rejected] (the prompt twice), the prompt runs once and both
# answers attend to its keys and values. Prompts are left-padded to one length P, so each
# row's positions are shifted by a constant; rotary embeddings depend only on position
# differences, so the log-probs equal the plain path's (to float rounding).

SHARED_PROMPT_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def supports_shared_prompt(model: nn.Module) -> bool:
    """True for mlx-lm decoder models whose attention takes its mask and offset from the cache."""
    args = getattr(model, "args", None)
    inner = getattr(model, "model", None)
    if args is None or inner is None or getattr(args, "model_type", None) not in SHARED_PROMPT_MODEL_TYPES:
        return False
    layer_types = getattr(args, "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in layer_types) or getattr(args, "use_sliding_window", False):
        return False
    return hasattr(inner, "layers") and hasattr(inner, "embed_tokens")


class _PrefixCache:
    """A per-layer stand-in for mlx-lm's KV cache: fixed mask and offset, optional prefix.

    ``update_and_fetch`` is functional (concatenation, no in-place writes), so gradients flow
    from the answers back through the prompt's keys and values.
    """

    def __init__(self, mask: mx.array, offset: int, prefix: tuple[mx.array, mx.array] | None = None) -> None:
        self.mask = mask
        self.offset = offset
        self.prefix = prefix
        self.keys: mx.array | None = None
        self.values: mx.array | None = None

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.keys, self.values = keys, values
        if self.prefix is not None:
            pk, pv = self.prefix
            keys = mx.concatenate([pk, keys], axis=2)
            values = mx.concatenate([pv, values], axis=2)
        return keys, values

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> mx.array:
        return self.mask


def _head(model: nn.Module, hidden: mx.array) -> mx.array:
    if getattr(model.args, "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
        return model.model.embed_tokens.as_linear(hidden)
    return model.lm_head(hidden)


def shared_prompt_logprobs(
    model: nn.Module,
    prompts: mx.array,
    prompt_pad: mx.array,
    answers: mx.array,
    copies: int = 2,
) -> tuple[mx.array, mx.array]:
    """Token log-probs of answers that share prompts, running each prompt once.

    ``prompts`` [N, P] left-padded (``prompt_pad`` [N] pad tokens at the start of each row);
    ``answers`` [copies*N, C] right-padded, row ``k*N + i`` answering prompt ``i``.
    Returns (log p(answers[:, j]) [copies*N, C], logits [copies*N, C, V]), float32.
    """
    n, p = prompts.shape
    c = answers.shape[1]
    pos = mx.arange(p)
    pad = prompt_pad[:, None, None, None]  # [N,1,1,1]
    q_pos, k_pos = pos[None, None, :, None], pos[None, None, None, :]
    # prompt pass: causal, pad keys hidden (pad queries see themselves so no row is empty)
    prompt_mask = ((k_pos <= q_pos) & (k_pos >= pad)) | (k_pos == q_pos)
    layers = model.model.layers
    caches = [_PrefixCache(prompt_mask, 0) for _ in layers]
    hidden = model.model(prompts, cache=caches)
    first = _head(model, hidden[:, -1:, :])  # predicts each answer's first token
    # answer pass: all real prompt keys, then causal over the answer
    pad_rep = mx.concatenate([prompt_pad] * copies)[:, None, None, None]
    a_pos = mx.arange(max(c - 1, 1))
    see_prompt = mx.broadcast_to(pos[None, None, None, :] >= pad_rep, (copies * n, 1, a_pos.size, p))
    causal = mx.broadcast_to(a_pos[None, None, None, :] <= a_pos[None, None, :, None], (copies * n, 1, a_pos.size, a_pos.size))
    answer_mask = mx.concatenate([see_prompt, causal], axis=-1)
    tiled = [
        _PrefixCache(answer_mask, p, (mx.concatenate([pc.keys] * copies), mx.concatenate([pc.values] * copies)))  # type: ignore[list-item]
        for pc in caches
    ]
    logits_first = mx.concatenate([first] * copies).astype(mx.float32)
    if c > 1:
        rest = _head(model, model.model(answers[:, :-1], cache=tiled)).astype(mx.float32)
        logits = mx.concatenate([logits_first, rest], axis=1)
    else:
        logits = logits_first
    return token_logprobs(logits, answers), logits
