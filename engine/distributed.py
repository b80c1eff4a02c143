"""Data-parallel ranks over ``mx.distributed`` (launched with ``mlx.launch``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx


@dataclass
class World:
    group: Any  # mx.distributed.Group or None for a single process
    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, grads: Any) -> Any:
        if self.size == 1:
            return grads
        from mlx.nn import average_gradients

        return average_gradients(grads, group=self.group)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (one all-reduce for all of them)."""
        if self.size == 1 or not values:
            return values
        keys = sorted(values)
        arr = mx.array([float(values[k]) for k in keys], dtype=mx.float32)
        total = mx.distributed.all_sum(arr, group=self.group)
        return {k: float(v) / self.size for k, v in zip(keys, total.tolist(), strict=True)}

    def sum(self, value: float) -> float:
        if self.size == 1:
            return value
        return float(mx.distributed.all_sum(mx.array([float(value)]), group=self.group).item())

    def broadcast_int(self, value: int) -> int:
        """Rank 0's value on every rank."""
        if self.size == 1:
            return value
        mine = mx.array([value if self.rank == 0 else 0], dtype=mx.int64)
        return int(mx.distributed.all_sum(mine, group=self.group).item())


def init_world() -> World:
    """The launcher's world, or a world of one when not launched by ``mlx.launch``."""
    try:
        group = mx.distributed.init()
    except Exception:
        return World(None, 0, 1)
    size = group.size()
    if size <= 1:
        return World(None, 0, 1)
    return World(group, group.rank(), size)
