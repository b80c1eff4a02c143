"""Log-probability math shared by every algorithm, always in float32."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def _head_module(model: nn.Module) -> tuple[nn.Module, Callable[[mx.array], mx.array]]:
    """The module holding the output layer's weights, and the output layer as a function."""
    if getattr(model.args, "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
        emb = model.model.embed_tokens
        return emb, emb.as_linear
    return model.lm_head, model.lm_head


def _vocab_size(model: nn.Module, head: nn.Module) -> int:
    size = getattr(getattr(model, "args", None), "vocab_size", None)
    if isinstance(size, int) and size > 0:
        return size
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else 32768


def _head(model: nn.Module, hidden: mx.array) -> mx.array:
    return _head_module(model)[1](hidden)


# ---------------------------------------------------------------- chunked output layer
#
# The output layer turns each position's hidden state into V logits (V = 32k-150k). Written
# out, a batch's logits in float32 take rows x positions x V x 4 bytes (8 pairs x 2 answers x
# 256 tokens x 32k = 0.54 GB, and as much again for their gradient), and autodiff keeps them
# until the backward pass. ``head_logprobs`` runs the output layer over a chunk of positions
# at a time under ``mx.checkpoint``: per chunk it keeps only the log-prob of the target and
# the mean logit (a metric), and the backward pass recomputes the chunk's logits from the
# hidden states. The full float32 logits never exist.
#
# The backward pass starts with the output layer, while every block's activations are still
# held, so a chunk's logits (bf16, their float32 copy, the softmax and the gradient, made in
# turn) add to the step's peak. A chunk is therefore sized by its logits, not its positions:
# CHUNK_LOGITS logits (256 MB as float32) is 2,048 positions of a 32k vocabulary, 512 of
# Llama 3's 128k and 384 of Qwen2.5's 152k (docs/performance.md has what it measured).

CHUNK_LOGITS = 2**26
CHUNK_POSITIONS: int | None = None  # positions per chunk: None = sized by CHUNK_LOGITS; 0 = write out all logits (benchmarks compare)


def chunk_positions(vocab_size: int) -> int:
    """Positions per chunk of the output layer for a vocabulary of ``vocab_size``: CHUNK_LOGITS
    logits, in a multiple of 128 positions (at least 128)."""
    if CHUNK_POSITIONS is not None:
        return CHUNK_POSITIONS
    return max(128, CHUNK_LOGITS // max(vocab_size, 1) // 128 * 128)


def supports_chunked_head(model: nn.Module) -> bool:
    """mlx-lm decoders whose output layer can be run apart from the blocks (``model.model`` + head)."""
    inner = getattr(model, "model", None)
    return getattr(model, "args", None) is not None and inner is not None and hasattr(inner, "embed_tokens")


def _chunk_stats(head: Callable[[mx.array], mx.array], hidden: mx.array, targets: mx.array, temperature: float = 1.0, second: str = "mean") -> tuple[mx.array, mx.array]:
    logits = head(hidden).astype(mx.float32)
    if temperature != 1.0:
        logits = logits / temperature
    logz = mx.logsumexp(logits, axis=-1)
    picked = mx.take_along_axis(logits, mx.stop_gradient(targets)[..., None], axis=-1).squeeze(-1)  # (checkpoint differentiates every input)
    if second == "entropy":  # a metric: no gradient flows through it
        logp = mx.stop_gradient(logits - logz[..., None])
        return picked - logz, -(mx.exp(logp) * logp).sum(axis=-1)
    return picked - logz, mx.stop_gradient(logits).mean(axis=-1)


def head_logprobs(
    model: nn.Module, hidden: mx.array, targets: mx.array, chunk: int | None = None, *, temperature: float = 1.0, second: str = "mean"
) -> tuple[mx.array, mx.array]:
    """(log p(target), mean logit) per position from hidden states [R, T, D], targets [R, T].

    With ``chunk`` (default :func:`chunk_positions` of the vocabulary) > 0 the output layer runs on that many positions
    at a time, checkpointed, so no [R, T, V] float32 array is materialised; 0 writes the
    logits out (the numbers agree to float rounding: tests/test_chunked_logprobs.py).
    ``temperature`` divides the logits first (the sampling distribution, as TRL scores
    rollouts); ``second = "entropy"`` returns each position's entropy (no gradient) instead of
    the mean logit.
    """
    module, head = _head_module(model)
    r, t, d = hidden.shape
    if chunk is None:
        chunk = chunk_positions(_vocab_size(model, module))
    if chunk <= 0:
        return _chunk_stats(head, hidden, targets, temperature, second)
    flat_h, flat_t = hidden.reshape(r * t, d), targets.reshape(r * t)

    def inner(params: Any, h: mx.array, tg: mx.array) -> tuple[mx.array, mx.array]:
        module.update(params)
        return _chunk_stats(head, h, tg, temperature, second)

    step = max(chunk, 1)
    fn = mx.checkpoint(inner)
    params = module.trainable_parameters()
    lps, means = [], []
    for start in range(0, r * t, step):
        lp, mean = fn(params, flat_h[start : start + step], flat_t[start : start + step])
        lps.append(lp)
        means.append(mean)
    lp = mx.concatenate(lps) if len(lps) > 1 else lps[0]
    mean = mx.concatenate(means) if len(means) > 1 else means[0]
    return lp.reshape(r, t), mean.reshape(r, t)


def shifted_token_stats(model: nn.Module, tokens: mx.array, chunk: int | None = None) -> tuple[mx.array, mx.array]:
    """``shifted_token_logprobs`` without the logits: (log p(tokens[:, 1:]), mean logit per position)."""
    if not supports_chunked_head(model):
        lp, logits = shifted_token_logprobs(model, tokens)
        return lp, logits.mean(axis=-1)
    return head_logprobs(model, model.model(tokens[:, :-1]), tokens[:, 1:], chunk)


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
    c = answers.shape[1]
    hidden, caches = _prompt_pass(model, prompts, prompt_pad)
    first = _head(model, hidden[:, -1:, :])  # predicts each answer's first token
    logits_first = mx.concatenate([first] * copies).astype(mx.float32)
    if c > 1:
        tiled = _answer_caches(caches, prompt_pad, prompts.shape[1], c, copies)
        rest = _head(model, model.model(answers[:, :-1], cache=tiled)).astype(mx.float32)
        logits = mx.concatenate([logits_first, rest], axis=1)
    else:
        logits = logits_first
    return token_logprobs(logits, answers), logits


def shared_prompt_stats(
    model: nn.Module,
    prompts: mx.array,
    prompt_pad: mx.array,
    answers: mx.array,
    copies: int = 2,
    chunk: int | None = None,
) -> tuple[mx.array, mx.array]:
    """``shared_prompt_logprobs`` through the chunked output layer: (log p(answers) [copies*N, C],
    mean logit per position [copies*N, C]); the logits are never written out whole."""
    return _shared_prompt(model, prompts, prompt_pad, answers, copies, chunk)


def _prompt_pass(model: nn.Module, prompts: mx.array, prompt_pad: mx.array) -> tuple[mx.array, list[_PrefixCache]]:
    """Run the left-padded prompts once: causal, pad keys hidden (pad queries see themselves
    so no row is empty). Returns the hidden states and each layer's filled cache."""
    pos = mx.arange(prompts.shape[1])
    pad = prompt_pad[:, None, None, None]  # [N,1,1,1]
    q_pos, k_pos = pos[None, None, :, None], pos[None, None, None, :]
    prompt_mask = ((k_pos <= q_pos) & (k_pos >= pad)) | (k_pos == q_pos)
    caches = [_PrefixCache(prompt_mask, 0) for _ in model.model.layers]
    return model.model(prompts, cache=caches), caches


def _answer_caches(caches: list[_PrefixCache], prompt_pad: mx.array, p: int, c: int, copies: int) -> list[_PrefixCache]:
    """Each prompt's keys/values tiled ``copies`` times, for the answer pass over ``c - 1``
    tokens: all real prompt keys, then causal over the answer."""
    n = prompt_pad.shape[0]
    pos = mx.arange(p)
    pad_rep = mx.concatenate([prompt_pad] * copies)[:, None, None, None]
    a_pos = mx.arange(c - 1)
    see_prompt = mx.broadcast_to(pos[None, None, None, :] >= pad_rep, (copies * n, 1, a_pos.size, p))
    causal = mx.broadcast_to(a_pos[None, None, None, :] <= a_pos[None, None, :, None], (copies * n, 1, a_pos.size, a_pos.size))
    answer_mask = mx.concatenate([see_prompt, causal], axis=-1)
    return [
        _PrefixCache(answer_mask, p, (mx.concatenate([pc.keys] * copies), mx.concatenate([pc.values] * copies)))  # type: ignore[list-item]
        for pc in caches
    ]


def _shared_prompt(model: nn.Module, prompts: mx.array, prompt_pad: mx.array, answers: mx.array, copies: int, chunk: int | None) -> tuple[mx.array, mx.array]:
    c = answers.shape[1]
    hidden, caches = _prompt_pass(model, prompts, prompt_pad)
    last = mx.concatenate([hidden[:, -1:, :]] * copies)  # predicts each answer's first token
    if c > 1:
        tiled = _answer_caches(caches, prompt_pad, prompts.shape[1], c, copies)
        last = mx.concatenate([last, model.model(answers[:, :-1], cache=tiled)], axis=1)
    return head_logprobs(model, last, answers, chunk)
