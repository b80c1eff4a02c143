"""A decode step traced once for a whole rollout: a fixed-size KV cache whose write position is an array.

mlx-lm's batch cache grows its buffers and slices them by a Python counter, so every token
has new shapes and a new graph that Python must build op by op: a few hundred operations
per layer per token. On a GPU that host work, not the device, sets the token rate (measured
8.7 ms a token for a 1B model with 64 rows on an H200, CPU time equal to wall time). Here
the cache is allocated at a fixed length (prompt width + up to SEGMENT new tokens, rounded
up so that batches of similar prompts share a trace; it grows by SEGMENT positions when a
row gets there, so short completions do not pay for ``max_new_tokens`` of attention and
memory); a token writes its keys and values at an array index (``mx.slice_update``),
attends over the whole buffer under a mask that hides the left padding and the positions
not yet written, and takes its RoPE position from an array. Nothing about a step depends on which token it is, so the step (forward, sampling,
EOS bookkeeping) is compiled once with ``mx.compile`` and replayed for every token.

Only models whose layers all use mlx-lm's plain ``KVCache`` and build their mask through
``create_attention_mask`` qualify (``engine.rollout`` checks the first; the module's test
checks the second for the architectures we ship); others keep the growing cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn

ROUND = 64  # cache lengths are rounded up to a multiple of this: similar batches share a trace
SEGMENT = 256  # the cache grows by this many positions at a time (one trace per length reached)


class StaticCache:
    """One layer's keys/values in a buffer of fixed length; ``idx`` (an array) is the next write."""

    def __init__(self, keys: mx.array, values: mx.array, left_padding: mx.array, idx: mx.array) -> None:
        self.keys = keys  # [B, kv_heads, length, head_dim]
        self.values = values
        self.left_padding = left_padding  # [B] int32
        self.idx = idx  # int32 scalar

    @property
    def offset(self) -> mx.array:
        """Each row's RoPE position for the token being written (its padding does not count)."""
        return self.idx - self.left_padding

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        start = self.idx.reshape(1)
        self.keys = mx.slice_update(self.keys, keys.astype(self.keys.dtype), start, axes=(2,))
        self.values = mx.slice_update(self.values, values.astype(self.values.dtype), start, axes=(2,))
        return self.keys, self.values

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> mx.array:
        """[B, 1, n, length]: a query sees its row's real tokens up to and including itself
        (and, with ``window_size``, only the last ``window_size`` of them, as mlx-lm's mask)."""
        pos = mx.arange(self.keys.shape[2])[None, None, :]
        query = (self.idx + mx.arange(n))[None, :, None]
        mask = (pos <= query) & (pos >= self.left_padding[:, None, None])
        if window_size is not None:
            mask = mask & (query < pos + window_size)
        return mask[:, None]


def cache_length(prompt_width: int, max_new_tokens: int) -> int:
    need = prompt_width + max_new_tokens
    return -(-need // ROUND) * ROUND


def grow(arrays: list[mx.array], extra: int) -> list[mx.array]:
    """Each [B, H, length, D] buffer with ``extra`` more (empty, masked) positions."""
    return [mx.concatenate([a, mx.zeros((*a.shape[:2], extra, a.shape[3]), dtype=a.dtype)], axis=2) for a in arrays]


def static_caches(batch_caches: list, length: int) -> list[StaticCache]:
    """The filled batch caches of a prefill, copied into buffers of ``length`` positions."""
    out = []
    for c in batch_caches:
        k, v = c.keys_and_values()
        used = k.shape[2]
        k, v = grow([k, v], length - used)
        out.append(StaticCache(k, v, c.left_padding.astype(mx.int32), mx.array(used, dtype=mx.int32)))
    return out


def decode_step_fn(
    model: nn.Module, sample: Callable[[mx.array], tuple[mx.array, mx.array]], eos: mx.array, pad_id: int, fusion: list | None = None
) -> Callable[..., Any]:
    """``step(tok, done, keys, values, left, idx, fused) -> (next_tok, logp, live, done, keys, values, idx + 1)``.

    ``tok`` [B] is the token just sampled (its successor's distribution is computed);
    ``sample`` draws from logits [B, V] and returns (tokens, their log-probs). Rows that are
    ``done`` emit ``pad_id`` and stay done. The step is traced once per cache shape
    (``mx.compile``), the model's weights and the random state being inputs, so a trained
    adapter and a fresh seed are seen at every call.

    ``fusion`` is a one-item list holding the rollout's ``engine.fused_projections.FusedDecoding``
    (or None), read when the step is traced; ``fused`` is its arrays (the fused weights).
    """

    def step(tok: mx.array, done: mx.array, keys: list[mx.array], values: list[mx.array], left: mx.array, idx: mx.array, fused: list[mx.array]) -> tuple[Any, ...]:
        caches = [StaticCache(k, v, left, idx) for k, v in zip(keys, values, strict=True)]
        fd = fusion[0] if fusion else None
        if fd is not None:
            fd.bind(fused)
        try:
            logits = model(tok[:, None], cache=caches)[:, -1, :]
        finally:
            if fd is not None:
                fd.unbind()
        nxt, logp = sample(logits)
        live = mx.logical_not(done)
        nxt = mx.where(live, nxt, pad_id).astype(mx.int32)
        done = mx.logical_or(done, (nxt[:, None] == eos[None, :]).any(axis=-1))
        return nxt, logp, live, done, [c.keys for c in caches], [c.values for c in caches], idx + 1

    state = [model.state, mx.random.state]
    return mx.compile(step, inputs=state, outputs=[mx.random.state])
