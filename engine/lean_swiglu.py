"""The SwiGLU activation of Llama/Qwen/Mistral MLPs, keeping fewer arrays for the backward pass.

mlx-lm's ``swiglu(gate, up) = silu(gate) * up`` is differentiated op by op, so a training
step keeps, for every layer until its backward pass, ``sigmoid(gate)`` and ``silu(gate)``
besides ``gate`` and ``up``: two more arrays of ``tokens x intermediate size`` per layer
(for a 1B Llama at 8,192 tokens, 16 layers x 2 x 134 MB in bf16). Here the function has its
own gradient, which recomputes the sigmoid from ``gate`` in the backward pass (one cheap
element-wise pass): the step keeps ``gate``, ``up`` and the output (which the down
projection keeps anyway), as a fused SwiGLU kernel does in PyTorch.

The value and the gradient are the same formulas: ``d/dgate = cot * up * s * (1 + gate * (1 - s))``
with ``s = sigmoid(gate)``, ``d/dup = cot * gate * s``, in the arrays' own dtype as
automatic differentiation computes them. The backward's sigmoid is written as
``1 / (1 + exp(-gate))`` on purpose: ``mx.compile`` merges identical expressions, and a
``mx.sigmoid(gate)`` there would be merged with the forward's and kept from the forward
pass to the backward, which is the memory this module saves.

:func:`install` puts the function in place of mlx-lm's ``swiglu`` in ``mlx_lm.models.activations``
and in every model module that imported it (models imported later get it from
``activations``). Measured in docs/performance.md ("Activation memory").
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

import mlx.core as mx

# None: on a GPU (Metal, CUDA), where the recomputed element-wise pass is small next to the
# matrix products (H100: the same step time) and memory is what runs out. On the CPU it cost
# 5-7% of a DPO step for 15% less peak memory (docs/performance.md), so mlx-lm's stays there.
# True / False force it either way (benchmarks, tests).
ENABLED: bool | None = None

_ORIGINAL: Any = None


@partial(mx.compile, shapeless=True)
def _forward(gate: mx.array, up: mx.array) -> mx.array:
    return gate * mx.sigmoid(gate) * up


@partial(mx.compile, shapeless=True)
def _backward(gate: mx.array, up: mx.array, cotangent: mx.array) -> tuple[mx.array, mx.array]:
    s = mx.reciprocal(1 + mx.exp(-gate))  # not mx.sigmoid: see the module doc
    return cotangent * up * (s * (1 + gate * (1 - s))), cotangent * (gate * s)


@mx.custom_function
def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """``silu(gate) * up``, with a backward pass that recomputes the sigmoid (each pass one
    fused element-wise kernel)."""
    return _forward(gate, up)


@swiglu.vjp
def _swiglu_vjp(primals: Any, cotangent: mx.array, output: mx.array) -> tuple[mx.array, mx.array]:
    gate, up = primals
    d_gate, d_up = _backward(gate, up, cotangent)
    return _like(d_gate, gate), _like(d_up, up)


def _like(grad: mx.array, primal: mx.array) -> mx.array:
    """``grad`` in ``primal``'s shape and dtype, as automatic differentiation gives it: summed
    over the axes ``primal`` was broadcast along (e.g. a gate of another shape than ``up``),
    cast back where the two inputs' dtypes differed (a float32 ``up`` must not make a bf16
    weight's gradient float32)."""
    if grad.shape != primal.shape:
        if grad.ndim > primal.ndim:
            grad = grad.sum(axis=tuple(range(grad.ndim - primal.ndim)))
        axes = tuple(i for i, (g, p) in enumerate(zip(grad.shape, primal.shape, strict=True)) if p == 1 and g != 1)
        if axes:
            grad = grad.sum(axis=axes, keepdims=True)
    return grad if grad.dtype == primal.dtype else grad.astype(primal.dtype)


def _targets(original: Any) -> list[Any]:
    return [m for name, m in list(sys.modules.items()) if name.startswith("mlx_lm.models.") and getattr(m, "swiglu", None) is original]


def install() -> bool:
    """Use :func:`swiglu` for mlx-lm's models where ``ENABLED`` says. Idempotent; returns
    whether it is in place."""
    global _ORIGINAL
    if not (ENABLED if ENABLED is not None else mx.default_device().type == mx.DeviceType.gpu):
        uninstall()  # an earlier install under other settings
        return False
    try:
        from mlx_lm.models import activations
    except ImportError:  # pragma: no cover - mlx-lm is a dependency
        return False
    if _ORIGINAL is None:
        if activations.swiglu is swiglu:
            return True
        _ORIGINAL = activations.swiglu
    for module in _targets(_ORIGINAL):  # also models imported since the last call
        module.swiglu = swiglu
    return True


def uninstall() -> None:
    """Give mlx-lm its own function back (benchmarks compare with and without)."""
    global _ORIGINAL
    if _ORIGINAL is None:
        return
    for module in _targets(swiglu):
        module.swiglu = _ORIGINAL
    _ORIGINAL = None
