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
from typing import Any

import mlx.core as mx

ENABLED = True  # benchmarks turn it off to compare

_ORIGINAL: Any = None


@mx.custom_function
def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """``silu(gate) * up``, with a backward pass that recomputes the sigmoid."""
    return gate * mx.sigmoid(gate) * up


@swiglu.vjp
def _swiglu_vjp(primals: Any, cotangent: mx.array, output: mx.array) -> tuple[mx.array, mx.array]:
    gate, up = primals
    s = mx.reciprocal(1 + mx.exp(-gate))  # not mx.sigmoid: see the module doc
    d_gate = cotangent * up * (s * (1 + gate * (1 - s)))
    d_up = cotangent * (gate * s)
    return d_gate, d_up


def _targets(original: Any) -> list[Any]:
    return [m for name, m in list(sys.modules.items()) if name.startswith("mlx_lm.models.") and getattr(m, "swiglu", None) is original]


def install() -> bool:
    """Use :func:`swiglu` for mlx-lm's models. Idempotent; returns whether it is in place."""
    global _ORIGINAL
    if not ENABLED:
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
