"""Data-parallel ranks over ``mx.distributed`` (launched with ``mlx.launch``).

Every rank runs the same program on its own share of each global batch; gradients are
averaged with one all-reduce per update (``nn.average_gradients``), metrics with one
all-reduce per step. Nothing here opens sockets itself: the backend (ring over TCP, NCCL
on NVIDIA GPUs, MPI, JACCL over Thunderbolt RDMA) is whatever ``mlx.launch`` set up.

Rules every rank-dependent code path must keep, or the ranks deadlock or drift apart:

* every rank makes the same collective calls in the same order (so a decision that ends a
  loop early, such as cancelling, is agreed with ``World.any`` first), and evaluates them
  where it makes them (a collective left in a lazy graph runs wherever each rank first
  needs its result, which differs between ranks: rank 0 alone saves run arrays);
* every rank holds the same weights (same seed, same averaged gradients), so only rank 0
  writes the run directory and nothing has to be broadcast.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

# Variables a launcher sets in each rank's environment (mlx.launch: MLX_RANK; mpirun: OMPI_*).
RANK_ENV = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


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

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (a collective call)."""
        if self.size == 1:
            return flag
        return self.sum(1.0 if flag else 0.0) > 0

    def broadcast_int(self, value: int) -> int:
        """Rank 0's value on every rank."""
        if self.size == 1:
            return value
        # float32 all-reduce on every backend; exact for |value| < 2**24 per half
        hi, lo = divmod(int(value), 1 << 20)
        mine = mx.array([hi, lo] if self.rank == 0 else [0, 0], dtype=mx.float32)
        h, l_ = mx.distributed.all_sum(mine, group=self.group).tolist()
        return (int(h) << 20) + int(l_)

    def broadcast_text(self, text: str) -> str:
        """Rank 0's string on every rank (e.g. the run directory it created)."""
        if self.size == 1:
            return text
        data = text.encode("utf-8") if self.rank == 0 else b""
        n = self.broadcast_int(len(data))
        mine = mx.array(list(data) if self.rank == 0 else [0] * n, dtype=mx.float32)
        if n == 0:
            return ""
        return bytes(int(b) for b in mx.distributed.all_sum(mine, group=self.group).tolist()).decode("utf-8")


    def gather_sharded(self, n: int, compute: Callable[[list[int]], mx.array]) -> mx.array:
        """Rows ``0..n-1`` computed a share per rank, then gathered in order on every rank.

        ``compute(indices)`` returns one row per index (``[len(indices), ...]``). Rank r
        computes indices r, r+size, ... (similar lengths on every rank for sorted data); the
        result is what one process computing all n rows returns, at 1/size of the work.
        """
        if self.size == 1 or n == 0:
            return compute(list(range(n)))
        mine = list(range(self.rank, n, self.size))
        rows = compute(mine)
        per_rank = -(-n // self.size)
        if len(mine) < per_rank:  # pad so every rank sends the same shape
            pad = mx.zeros((per_rank - len(mine), *rows.shape[1:]), dtype=rows.dtype)
            rows = mx.concatenate([rows, pad], axis=0) if len(mine) else pad
        everything = mx.distributed.all_gather(rows, group=self.group)  # [size * per_rank, ...]
        tail = everything.shape[1:]
        ordered = everything.reshape(self.size, per_rank, *tail).swapaxes(0, 1).reshape(self.size * per_rank, *tail)[:n]
        # evaluate now: a collective left in a lazy graph runs wherever each rank first needs
        # it, and ranks that reach two such graphs in different orders wait for each other
        mx.eval(ordered)
        return ordered


    def sync_parameters(self, module: Any) -> bool:
        """Make every rank hold rank 0's parameters; True when some rank's differed.

        Ranks on different machines load the model separately (a built-in model built on
        each, a hub model from each cache); data parallelism needs identical starting
        weights. One small all-reduce compares per-array checksums; only on a mismatch are
        the arrays copied from rank 0 (one all-reduce per array).
        """
        if self.size == 1:
            return False
        from mlx.utils import tree_flatten, tree_unflatten

        params = tree_flatten(module.parameters())
        if not params:
            return False
        sums = mx.stack([x.astype(mx.float32).sum() for _, x in params])
        theirs = mx.distributed.all_sum(sums if self.rank == 0 else mx.zeros_like(sums), group=self.group)
        differs = bool(mx.any(theirs != sums).item())
        if not self.any(differs):
            return False
        copied = [(k, mx.distributed.all_sum(x if self.rank == 0 else mx.zeros_like(x), group=self.group)) for k, x in params]
        module.update(tree_unflatten(copied))
        mx.eval(module.parameters())
        return True


_WORLD: World | None = None


def launched_rank() -> int:
    """This process's rank as the launcher announced it (0 when not launched)."""
    for name in RANK_ENV:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def launched() -> bool:
    """Whether a launcher started this process as one of several ranks."""
    return any(os.environ.get(name, "").isdigit() for name in RANK_ENV)


def init_world() -> World:
    """The launcher's world, or a world of one when not launched by ``mlx.launch``.

    Initialised once per process; later calls return the same world.
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    from engine.cuda_settings import apply_cuda_defaults

    apply_cuda_defaults()  # before NCCL's first GPU work: MLX reads it once
    try:
        group = mx.distributed.init()
    except Exception:  # noqa: BLE001 - no backend: train alone
        group = None
    if group is None or group.size() <= 1:
        _WORLD = World(None, 0, 1)
    else:
        _WORLD = World(group, group.rank(), group.size())
    return _WORLD
