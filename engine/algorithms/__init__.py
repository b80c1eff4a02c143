"""Algorithms by name. Each module holds one algorithm with the same small interface;
``engine.algorithms.registry`` declares them all (this package stays import-light: the
MLX-backed ``Algorithm`` and ``TrainContext`` load on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.algorithms.registry import REGISTRY, AlgorithmSpec, algorithm_class, spec

if TYPE_CHECKING:
    from engine.algorithms.base import Algorithm, TrainContext


def __getattr__(name: str) -> Any:
    if name in ("Algorithm", "TrainContext"):
        from engine.algorithms import base

        return getattr(base, name)
    raise AttributeError(f"module 'engine.algorithms' has no attribute {name!r}")


__all__ = ["REGISTRY", "Algorithm", "AlgorithmSpec", "TrainContext", "algorithm_class", "spec"]
