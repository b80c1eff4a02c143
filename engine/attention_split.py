"""Attention over any query length with the fused backward pass, by splitting the queries.

MLX's CUDA attention (cuDNN) differentiates through its fused kernel only when the query
length is a multiple of 128 (``engine.batching.CUDA_ATTENTION_TILE``); at any other length
the backward pass writes out the whole attention (scores for every query and key, float32)
and differentiates that. Real batches rarely come in such lengths: a batch of prompts of
~520 tokens, or answers of ~270, misses the tile, and padding to the next multiple would
add up to 127 positions to every row.

Here the queries are split instead: the first ``128 * k`` go through the fused kernel, the
rest (fewer than 128) through a second, small call. Each query's attention is the same
computation as before: it sees the same keys under the same mask (a ``"causal"`` mask is
aligned to the bottom right, so the first part keeps only the keys its queries can see).
The outputs are joined along the query axis.

:func:`install` routes ``mx.fast.scaled_dot_product_attention`` (which mlx-lm's models
call) through the split, where the tile is above 1 (a CUDA device); it changes nothing on
the CPU or Metal. Decoding (one query) and lengths that already fit pass straight through.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

# On where there is a tile (CUDA). It crashed MLX 0.32.4's cuDNN backward until the first part's keys
# were padded to the tile (pad_keys); padded, an H100 (2026-12-06, 1B DPO) ran it on real batches
# with a step 0.77x (full) and 0.80x (LoRA) as long, peak memory +5-8% (docs/performance.md).
ENABLED = True
# Recompute the split's pieces in the backward pass instead of holding them (split_attention).
CHECKPOINT = True

_ORIGINAL: Any = None


def pad_keys(q: mx.array, k: mx.array, v: mx.array, mask: Any, tile: int) -> tuple[mx.array, mx.array, Any]:
    """Keys and values padded with masked-out zeros to a multiple of ``tile`` where the query
    count is one and the key count is not; the mask made explicit and padded to match.

    MLX's cuDNN backward pass (0.32.4, H100) corrupts memory for a query count that is a
    multiple of 128 attending to a key count that is not (e.g. 512 queries over 528 keys,
    masked): the process dies with "illegal memory access" or a corrupted heap. A masked-out
    key changes no query's attention, so the result is the same."""
    lq, lk = q.shape[2], k.shape[2]
    extra = -lk % tile
    if tile <= 1 or extra == 0 or lq % tile:
        return k, v, mask
    if isinstance(mask, str):  # "causal", aligned to the bottom right
        mask = mx.arange(lk)[None, :] <= mx.arange(lq)[:, None] + (lk - lq)
    elif mask is None:
        mask = mx.ones((1, lk), dtype=mx.bool_)
    elif mask.shape[-1] != lk:
        mask = mx.broadcast_to(mask, (*mask.shape[:-1], lk))
    fill = False if mask.dtype == mx.bool_ else float("-inf")
    mask = mx.concatenate([mask, mx.full((*mask.shape[:-1], extra), fill, dtype=mask.dtype)], axis=-1)
    k = mx.concatenate([k, mx.zeros((*k.shape[:2], extra, k.shape[3]), dtype=k.dtype)], axis=2)
    v = mx.concatenate([v, mx.zeros((*v.shape[:2], extra, v.shape[3]), dtype=v.dtype)], axis=2)
    return k, v, mask


def split_attention(q: mx.array, k: mx.array, v: mx.array, *, scale: float, mask: Any = None, tile: int, attend: Any = None, **kw: Any) -> mx.array:
    """``attend(q, k, v, scale=..., mask=...)`` (MLX's fused attention by default) with the
    queries split into a multiple of ``tile`` and a remainder, as the module doc says; the
    first part's keys padded to a multiple of ``tile`` too (:func:`pad_keys`).

    ``q`` [B, H, L, D]; ``mask`` None, ``"causal"`` or an array broadcastable to
    [B, H, L, S]. Other keywords (``sinks``, ``stream``) go to both calls."""
    attend = attend or _ORIGINAL or mx.fast.scaled_dot_product_attention
    n = q.shape[2]
    head = (n // tile) * tile
    if tile <= 1 or head == 0 or (isinstance(mask, str) and k.shape[2] < n):
        return attend(q, k, v, scale=scale, mask=mask, **kw)

    def parts(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        def tiled(q: mx.array, k: mx.array, v: mx.array, m: Any) -> mx.array:
            k, v, m = pad_keys(q, k, v, m, tile)
            return attend(q, k, v, scale=scale, mask=m, **kw)

        if head == n:
            return tiled(q, k, v, mask)
        tail = n - head
        if isinstance(mask, str):  # "causal": bottom-right aligned; the first queries see no later key
            s = k.shape[2]
            first = tiled(q[:, :, :head], k[:, :, : s - tail], v[:, :, : s - tail], mask)
            rest = attend(q[:, :, head:], k, v, scale=scale, mask=mask, **kw)
        elif mask is None:
            first = tiled(q[:, :, :head], k, v, None)
            rest = attend(q[:, :, head:], k, v, scale=scale, **kw)
        else:
            if mask.ndim >= 2 and mask.shape[-2] != 1:
                m1, m2 = mask[..., :head, :], mask[..., head:, :]
            else:  # the same mask row for every query
                m1 = m2 = mask
            first = tiled(q[:, :, :head], k, v, m1)
            rest = attend(q[:, :, head:], k, v, scale=scale, mask=m2, **kw)
        return mx.concatenate([first, rest], axis=2)

    # Checkpointed, the backward pass keeps q, k, v (which plain attention keeps too) and the
    # joined output (the next projection's input), and recomputes the parts, the padded keys
    # and the parts' outputs: held until the backward pass they cost ~70 MB a layer for a 1B
    # model's DPO batch (the split's measured 1.2 / 1.9 GB of peak memory on an H100).
    # mx.checkpoint differentiates every input it is given, and MLX's CUDA attention has no
    # gradient for a mask or sinks, so the mask (never learned) is closed over; an array among
    # the other keywords (a learned ``sinks``) would lose its gradient that way, so with one
    # the split is not checkpointed.
    if CHECKPOINT and not any(isinstance(value, mx.array) for value in kw.values()):
        return mx.checkpoint(parts)(q, k, v)
    return parts(q, k, v)


def install() -> bool:
    """Route MLX's fused attention through :func:`split_attention` where the device has a tile
    (CUDA). Idempotent; returns whether the split is active."""
    global _ORIGINAL
    from engine.batching import attention_tile

    tile = attention_tile()
    if not ENABLED or tile <= 1:
        return False
    if _ORIGINAL is not None:
        return True
    original = mx.fast.scaled_dot_product_attention

    def scaled_dot_product_attention(q: mx.array, k: mx.array, v: mx.array, *, scale: float, mask: Any = None, **kw: Any) -> mx.array:
        return split_attention(q, k, v, scale=scale, mask=mask, tile=tile, attend=original, **kw)

    scaled_dot_product_attention.__doc__ = original.__doc__
    _ORIGINAL = original
    mx.fast.scaled_dot_product_attention = scaled_dot_product_attention
    return True


def uninstall() -> None:
    """Restore MLX's own function (benchmarks compare with and without)."""
    global _ORIGINAL
    if _ORIGINAL is not None:
        mx.fast.scaled_dot_product_attention = _ORIGINAL
        _ORIGINAL = None
