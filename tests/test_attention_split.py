"""Splitting attention's queries at the CUDA tile computes the same attention and gradients.

The split only acts on CUDA; here it is called directly with a small tile so the CPU runs the
same code path: every query must get the same output, and q, k, v the same gradients, as one
call over all queries, for each kind of mask mlx-lm and the engine pass."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engine import attention_split
from engine.attention_split import split_attention

B, H, D = 2, 4, 16


def _inputs(n_q: int, n_k: int, seed: int = 0) -> tuple[mx.array, mx.array, mx.array]:
    mx.random.seed(seed)
    q, k, v = (mx.random.normal((B, H, n, D)) for n in (n_q, n_k, n_k))
    return q, k, v


def _masks(n_q: int, n_k: int) -> dict[str, object]:
    rng = np.random.default_rng(1)
    keep = rng.random((B, 1, n_q, n_k)) > 0.3
    keep[..., -1] = True  # every query sees at least one key
    return {
        "none": None,
        "causal": "causal",
        "bool": mx.array(keep),
        "additive": mx.array(np.where(keep, 0.0, -1e9).astype(np.float32)),
        "one row": mx.array(np.where(keep[:, :, :1, :], 0.0, -1e9).astype(np.float32)),  # broadcast over queries
    }


def _close(a: mx.array, b: mx.array, reduce_len: int) -> None:
    # float32: a softmax over reduce_len keys and a weighted sum of as many values; the split
    # can change the summation order, not the terms (masked keys weigh exactly zero)
    tol = 8 * reduce_len * np.finfo(np.float32).eps
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "additive", "one row"])
@pytest.mark.parametrize(("n_q", "n_k"), [(11, 11), (11, 19), (16, 16), (3, 9), (8, 19), (12, 13)])
def test_split_equals_one_call(mask_kind: str, n_q: int, n_k: int) -> None:
    q, k, v = _inputs(n_q, n_k)
    mask = _masks(n_q, n_k)[mask_kind]
    scale = D**-0.5
    whole = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    split = split_attention(q, k, v, scale=scale, mask=mask, tile=4)
    assert split.shape == whole.shape
    _close(split, whole, n_k)

    cot = mx.random.normal(whole.shape)

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v) * cot).sum()

    g_whole = mx.grad(loss(lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)), argnums=(0, 1, 2))(q, k, v)
    g_split = mx.grad(loss(lambda q, k, v: split_attention(q, k, v, scale=scale, mask=mask, tile=4)), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_split, g_whole, strict=True):
        _close(a, b, n_k)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "additive", "one row"])
@pytest.mark.parametrize(("n_q", "n_k"), [(11, 19), (8, 19), (12, 13), (16, 16)])
def test_a_tile_of_queries_never_meets_keys_off_the_tile(mask_kind: str, n_q: int, n_k: int) -> None:
    """MLX's cuDNN backward corrupts memory for 128k queries over keys that are not 128k
    (an H100, 2026-12-06): every call with a whole tile of queries gets whole tiles of keys."""
    q, k, v = _inputs(n_q, n_k)
    seen: list[tuple[int, int]] = []

    def spy(q, k, v, **kw):
        seen.append((q.shape[2], k.shape[2]))
        return mx.fast.scaled_dot_product_attention(q, k, v, **kw)

    split_attention(q, k, v, scale=0.25, mask=_masks(n_q, n_k)[mask_kind], tile=4, attend=spy)
    assert seen and all(lk % 4 == 0 for lq, lk in seen if lq % 4 == 0), seen
    assert all(lk <= n_k for lq, lk in seen if lq % 4)  # the remainder's keys are left as they are


def test_causal_first_part_sees_only_its_keys() -> None:
    """With a causal mask the first queries must not see the keys of the later ones: changing
    the last key changes only the last queries' outputs."""
    q, k, v = _inputs(10, 10)
    out = split_attention(q, k, v, scale=1.0, mask="causal", tile=4)
    v2 = mx.concatenate([v[:, :, :-1], v[:, :, -1:] + 100.0], axis=2)
    out2 = split_attention(q, k, v2, scale=1.0, mask="causal", tile=4)
    assert np.array_equal(np.array(out[:, :, :9]), np.array(out2[:, :, :9]))
    assert not np.allclose(np.array(out[:, :, 9]), np.array(out2[:, :, 9]))


def test_install_is_a_no_op_without_a_tile() -> None:
    """On the CPU (no tile) MLX's own function stays in place."""
    before = mx.fast.scaled_dot_product_attention
    assert attention_split.install() is False
    assert mx.fast.scaled_dot_product_attention is before


def test_on_by_default_where_there_is_a_tile_and_inert_without(monkeypatch: pytest.MonkeyPatch) -> None:
    """On by default on CUDA (tile 128: an H100 ran it on real batches once the keys were
    padded); on the CPU and Metal (tile 1) MLX's own function stays in place."""
    import engine.batching

    before = mx.fast.scaled_dot_product_attention
    monkeypatch.setattr(engine.batching, "attention_tile", lambda: 1)
    assert attention_split.install() is False
    assert mx.fast.scaled_dot_product_attention is before
    monkeypatch.setattr(engine.batching, "attention_tile", lambda: 128)
    try:
        assert attention_split.install() is True
        assert mx.fast.scaled_dot_product_attention is not before
    finally:
        attention_split.uninstall()
    assert mx.fast.scaled_dot_product_attention is before


def test_install_routes_mlx_attention_through_the_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the device has a tile, a model's call to mx.fast's attention is split, and gives
    what the unsplit call gives."""
    import engine.batching

    monkeypatch.setattr(engine.batching, "attention_tile", lambda: 4)
    monkeypatch.setattr(attention_split, "ENABLED", True)  # the default; a test may have turned it off
    original = mx.fast.scaled_dot_product_attention
    calls: list[int] = []

    def counting(q, k, v, **kw):
        calls.append(q.shape[2])
        return original(q, k, v, **kw)

    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention", counting)
    try:
        assert attention_split.install() is True
        q, k, v = _inputs(10, 10)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal")
        assert calls == [8, 2]  # the tile's multiple, then the rest
        _close(out, original(q, k, v, scale=0.25, mask="causal"), 10)
    finally:
        attention_split.uninstall()
    assert mx.fast.scaled_dot_product_attention is counting


def test_a_learned_sink_gets_the_same_gradient_through_the_split() -> None:
    """Models with attention sinks (gpt-oss) learn them: the split passes ``sinks`` into its
    checkpoint as an input, so their gradient is the unsplit call's, not silently zero."""
    q, k, v = _inputs(11, 11)
    sinks = mx.array([0.5, -1.0, 2.0, 0.0])
    whole = mx.grad(lambda s: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal", sinks=s).sum())(sinks)
    split = mx.grad(lambda s: split_attention(q, k, v, scale=0.25, mask="causal", sinks=s, tile=4).sum())(sinks)
    assert float(mx.abs(whole).max()) > 0.1
    _close(split, whole, 11 * 11)


def _peak_of_backward(layers: int, checkpoint: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[float, int]:
    """Peak MLX memory (bytes above what was held before) of the gradient of a stack of
    attention layers run through the split, and one layer's attention output in bytes."""
    monkeypatch.setattr(attention_split, "CHECKPOINT", checkpoint)
    b, h, n, d = 4, 8, 200, 32
    mx.random.seed(3)
    weights = [mx.random.normal((h * d, 3 * h * d)) * 0.02 for _ in range(layers)]
    x = mx.random.normal((b, n, h * d))
    mx.eval(weights, x)

    def loss(weights: list[mx.array]) -> mx.array:
        y = x
        for w in weights:
            q, k, v = (y @ w).reshape(b, n, 3, h, d).transpose(2, 0, 3, 1, 4)
            o = split_attention(q, k, v, scale=d**-0.5, mask="causal", tile=64)
            y = y + o.transpose(0, 2, 1, 3).reshape(b, n, h * d)
        return y.sum()

    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    mx.eval(mx.grad(loss)(weights))
    return mx.get_peak_memory() - before, b * h * n * d * 4


def test_checkpointed_split_holds_less_for_the_backward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held until the backward pass, the split's pieces (the two parts' outputs before they are
    joined) cost about one attention output a layer; checkpointed, they are recomputed instead.
    Over 6 layers the peak must drop by at least 3 such outputs (measured: ~7)."""
    layers = 6
    held, out_bytes = _peak_of_backward(layers, False, monkeypatch)
    recomputed, _ = _peak_of_backward(layers, True, monkeypatch)
    assert held - recomputed >= (layers // 2) * out_bytes, (held, recomputed, out_bytes)


def test_the_checkpoint_differentiates_only_queries_keys_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLX's CUDA attention has no gradient for its mask ("Does not support VJP with respect to
    mask", an H100 on 2026-12-06) and mx.checkpoint differentiates every input it is given: an
    array mask must reach the checkpointed split as a constant, not an input."""
    given: list[int] = []
    real = mx.checkpoint

    def spy(fn):
        inner = real(fn)

        def call(*args):
            given.append(len(args))
            return inner(*args)

        return call

    monkeypatch.setattr(mx, "checkpoint", spy)
    q, k, v = _inputs(11, 19)
    for mask_kind in ("bool", "additive", "causal", "none"):
        mask = _masks(11, 19)[mask_kind]
        mx.eval(mx.grad(lambda q, mask=mask: split_attention(q, k, v, scale=0.25, mask=mask, tile=4).sum())(q))
    assert given == [3, 3, 3, 3]
