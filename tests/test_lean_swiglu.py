"""engine.lean_swiglu: same values and gradients as silu(gate) * up, less memory kept for the
backward pass, and in place for mlx-lm's models once a policy is loaded."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from engine import lean_swiglu


def _reference_grads(gate: np.ndarray, up: np.ndarray, cot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # written out in float64: silu(g) = g * sigmoid(g); silu'(g) = sigmoid(g) * (1 + g * (1 - sigmoid(g)))
    s = 1.0 / (1.0 + np.exp(-gate))
    return cot * up * (s + gate * s * (1 - s)), cot * gate * s


@pytest.mark.parametrize("compiled", [False, True])
def test_values_and_gradients_match_the_formula(compiled: bool) -> None:
    rng = np.random.default_rng(0)
    gate = rng.normal(0, 3, (64, 96)).astype(np.float32)
    up = rng.normal(0, 1, (64, 96)).astype(np.float32)
    cot = rng.normal(0, 1, (64, 96)).astype(np.float32)

    def f(g: mx.array, u: mx.array) -> mx.array:
        return (lean_swiglu.swiglu(g, u) * mx.array(cot)).sum()

    vg = mx.value_and_grad(f, argnums=(0, 1))
    if compiled:
        vg = mx.compile(vg)
    value, (dg, du) = vg(mx.array(gate), mx.array(up))
    g64, u64, c64 = gate.astype(np.float64), up.astype(np.float64), cot.astype(np.float64)
    want_value = float((g64 / (1 + np.exp(-g64)) * u64 * c64).sum())
    want_dg, want_du = _reference_grads(g64, u64, c64)
    eps = np.finfo(np.float32).eps
    # each element is a handful of float32 operations: a few ulps of its operands' scale
    scale = np.abs(c64) * (np.abs(u64) + 1) * (np.abs(g64) + 1)
    np.testing.assert_array_less(np.abs(np.array(dg) - want_dg), 16 * eps * scale + 1e-30)
    np.testing.assert_array_less(np.abs(np.array(du) - want_du), 16 * eps * scale + 1e-30)
    # the sum of 6,144 products: error grows at most with n * eps of the sum of magnitudes
    bound = gate.size * eps * float(np.abs(g64 * u64 * c64).sum())
    assert abs(float(value) - want_value) <= bound


def test_broadcast_and_mixed_dtype_inputs_get_gradients_as_autodiff_gives_them() -> None:
    """A gate of another shape or dtype than ``up`` (a bf16 projection times a float32 branch)
    gets its gradient in its own shape and dtype, as op-by-op differentiation gives it."""
    def plain(g: mx.array, u: mx.array) -> mx.array:
        return g * mx.sigmoid(g) * u

    rng = np.random.default_rng(2)
    cases = [
        (mx.array(rng.normal(size=(4, 8)).astype(np.float32)), mx.array(rng.normal(size=(1, 8)).astype(np.float32))),
        (mx.array(rng.normal(size=(8,)).astype(np.float32)), mx.array(rng.normal(size=(3, 4, 8)).astype(np.float32))),
        (mx.array(rng.normal(size=(4, 8))).astype(mx.bfloat16), mx.array(rng.normal(size=(4, 8)).astype(np.float32))),
    ]
    for gate, up in cases:
        want = mx.grad(lambda g, u: plain(g, u).sum(), argnums=(0, 1))(gate, up)
        got = mx.grad(lambda g, u: lean_swiglu.swiglu(g, u).sum(), argnums=(0, 1))(gate, up)
        # the same formula in the inputs' lowest precision: a few of its rounding steps, summed
        # over at most 3 broadcast copies
        eps = 2.0**-8 if mx.bfloat16 in (gate.dtype, up.dtype) else float(np.finfo(np.float32).eps)
        for w, o in zip(want, got, strict=True):
            assert o.shape == w.shape and o.dtype == w.dtype
            scale = 1 + float(mx.abs(w.astype(mx.float32)).max())
            assert float(mx.abs(o.astype(mx.float32) - w.astype(mx.float32)).max()) <= 3 * 8 * eps * scale


def _peak_bytes(act, layers: int, positions: int, width: int, hidden: int) -> int:
    mx.random.seed(1)
    ws = [(mx.random.normal((width, hidden)) * 0.05, mx.random.normal((width, hidden)) * 0.05, mx.random.normal((hidden, width)) * 0.05) for _ in range(layers)]
    x = mx.random.normal((positions, hidden))
    mx.eval(ws, x)

    def loss(x: mx.array, ws: list) -> mx.array:
        h = x
        for g, u, d in ws:
            h = h + act(h @ g.T, h @ u.T) @ d.T
        return (h * h).mean()

    mx.eval(x)
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    out = mx.value_and_grad(loss, argnums=(0, 1))(x, ws)
    mx.eval(out)
    return mx.get_peak_memory() - base


def test_backward_keeps_two_fewer_arrays_per_layer() -> None:
    from mlx_lm.models.activations import swiglu as mlx_swiglu

    if mlx_swiglu is lean_swiglu.swiglu:  # installed by an earlier test: take the original
        mlx_swiglu = lean_swiglu._ORIGINAL
    layers, positions, width, hidden = 6, 512, 1024, 128
    one = positions * width * 4  # one float32 array of tokens x intermediate size
    plain = _peak_bytes(mlx_swiglu, layers, positions, width, hidden)
    lean = _peak_bytes(lean_swiglu.swiglu, layers, positions, width, hidden)
    # op-by-op differentiation keeps sigmoid(gate) and silu(gate) for every layer; the lean
    # function keeps neither (allow half an array per layer for the allocator's rounding)
    assert plain - lean >= math.floor(1.5 * layers) * one, (plain / one, lean / one)


def test_load_policy_puts_it_in_mlx_lm_models(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlx_lm.models.llama as llama
    from mlx_lm.models import activations

    from engine.builtin import builtin_model_path
    from engine.models import load_policy
    from engine.presets import load_preset

    lean_swiglu.uninstall()
    assert llama.swiglu is not lean_swiglu.swiglu
    # by default only on a GPU: the CPU keeps mlx-lm's
    load_policy(load_preset("tiny-dpo", [f"model.path={builtin_model_path()}"]))
    assert (llama.swiglu is lean_swiglu.swiglu) == (mx.default_device().type == mx.DeviceType.gpu)
    monkeypatch.setattr(lean_swiglu, "ENABLED", True)
    policy = load_policy(load_preset("tiny-dpo", [f"model.path={builtin_model_path()}"])).model
    assert llama.swiglu is lean_swiglu.swiglu and activations.swiglu is lean_swiglu.swiglu
    # the model's output is what mlx-lm's own activation gives
    tokens = mx.array([[5, 9, 14, 3, 7, 21]])
    ours = policy(tokens)
    lean_swiglu.uninstall()
    theirs = policy(tokens)
    assert mx.array_equal(ours, theirs) or float(mx.abs(ours - theirs).max()) <= 64 * np.finfo(np.float32).eps * float(mx.abs(theirs).max())
