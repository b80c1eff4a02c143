"""Sibling projections that read the same input, run as one matmul while decoding.

A transformer block projects one input three times for attention (``q_proj``, ``k_proj``,
``v_proj``) and twice for the MLP (``gate_proj``, ``up_proj``). Decoding one token for a
batch makes each of those a small matmul, and on a GPU the host's cost of launching a
matmul (~20 µs on an H100 with MLX's CUDA backend: ``benchmarks/host_cost.py``) sets the
token rate, not the device's arithmetic. Here each such group runs as one matmul over the
concatenated weights, and each member takes its slice of the output: the same dot
products, three launches fewer per block. LoRA adapters on the members are kept: their
down-projections (``lora_a``) are concatenated the same way, their up-projections apply
per member.

The concatenated weights are built once per rollout and each member's own weight becomes
a view into them (a slice of rows shares the buffer), so fusing costs no memory; a frozen
base is fused once for the whole run. The members' classes are switched only inside
:func:`fused_decoding` and restored on exit; a member called with any other input (or
outside a compiled decode step) computes exactly as before. Quantized layers, DoRA and
members with differing input sizes or bias are left alone.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import mlx.nn as nn

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# off: on an H100 it made the compiled decode step slower, twice (7.90 against 7.38 ms a token
# on 2026-12-05, 8.12 against 7.59 on 2026-12-06; docs/performance.md); benchmarks turn it on
ENABLED = False
# Eager decoding (the CUDA default, engine.rollout.compiled_decoding) is host-bound: every
# matmul is a launch (~20 us on an H100). With EAGER the groups are bound once per rollout and
# each block launches two matmuls where it launched five. Off until measured on a GPU
# (``benchmarks/rollouts.py --eager-fused``; on the 2-core CPU it was 0.87x and 0.995x the
# time a token). None: on a GPU only; True / False force it.
EAGER: bool | None = False


class _Group:
    """One block's sibling projections: their concatenated weights and, while a step is
    traced, the fused output for the input last seen."""

    def __init__(self, bases: list[nn.Linear], loras: list[Any] | None) -> None:
        self.bases = bases
        self.loras = loras  # the LoRA modules wrapping each base, or None
        sizes = [b.weight.shape[0] for b in bases]
        self.cuts = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        ranks = [m.lora_a.shape[1] for m in loras] if loras else []
        self.lora_cuts = [sum(ranks[: i + 1]) for i in range(len(ranks) - 1)]
        self.weight: mx.array | None = None  # the fused weight (a traced input inside a step)
        self.bias: mx.array | None = None
        self.lora_a: mx.array | None = None
        self._views: list[mx.array] = []
        self._w: mx.array | None = None
        self._b: mx.array | None = None
        self._x: mx.array | None = None
        self._outs: list[mx.array] = []
        self._zs: list[mx.array] = []

    def arrays(self) -> list[mx.array]:
        """The fused weight (bias, LoRA down-projection) for this rollout; the members' own
        weights become views into it. Reused while a frozen base is unchanged."""
        if not (self._views and all(b.weight is v for b, v in zip(self.bases, self._views, strict=True))):
            w = mx.concatenate([b.weight for b in self.bases], axis=0)
            starts = [0, *self.cuts]
            ends = [*self.cuts, w.shape[0]]
            self._views = [w[s:e] for s, e in zip(starts, ends, strict=True)]
            self._b = mx.concatenate([b.bias for b in self.bases]) if "bias" in self.bases[0] else None
            mx.eval(w, self._views, *([self._b] if self._b is not None else []))  # one group's copy at a time; then the separate weights go
            for b, v in zip(self.bases, self._views, strict=True):
                b.weight = v
            self._w = w
        assert self._w is not None
        out = [self._w] + ([self._b] if self._b is not None else [])
        if self.loras:
            out.append(mx.concatenate([_lora_a(m, self._w.dtype) for m in self.loras], axis=1))
        return out

    def bind(self, arrays: list[mx.array]) -> list[mx.array]:
        """Take this group's arrays (traced inputs) from the front of ``arrays``; return the rest."""
        n = 1 + (self._b is not None) + (self.loras is not None)
        mine, rest = arrays[:n], arrays[n:]
        self.weight = mine[0]
        self.bias = mine[1] if self._b is not None else None
        self.lora_a = mine[-1] if self.loras else None
        return rest

    def unbind(self) -> None:
        self.weight = self.bias = self.lora_a = self._x = None
        self._outs, self._zs = [], []

    def output(self, x: mx.array, i: int) -> tuple[mx.array, mx.array | None]:
        """Member ``i``'s projection of ``x`` (and its LoRA down-projection, if fused)."""
        if self._x is not x:
            w = self.weight
            y = mx.addmm(self.bias, x, w.T) if self.bias is not None else x @ w.T
            self._outs = mx.split(y, self.cuts, axis=-1)
            self._zs = mx.split(x.astype(self.lora_a.dtype) @ self.lora_a, self.lora_cuts, axis=-1) if self.lora_a is not None else []
            self._x = x
        return self._outs[i], (self._zs[i] if self._zs else None)


def _lora_a(module: Any, dtype: mx.Dtype) -> mx.array:
    from engine.lora_precision import activation_dtype_lora_class

    a = module.lora_a
    return a.astype(dtype) if type(module) is activation_dtype_lora_class() and a.dtype != dtype else a


def _is_plain_linear(m: Any) -> bool:
    return type(m) is nn.Linear


def _is_plain_lora(m: Any) -> bool:
    """A LoRA layer on a plain linear whose dropout does nothing now (fusing skips it)."""
    from mlx_lm.tuner.lora import LoRALinear

    from engine.lora_precision import activation_dtype_lora_class

    no_dropout = getattr(m.dropout, "_p_1", 1.0) == 1.0 or not m.training
    return type(m) in (LoRALinear, activation_dtype_lora_class()) and _is_plain_linear(m.linear) and no_dropout


def find_groups(model: nn.Module) -> list[tuple[_Group, list[nn.Module]]]:
    """Every group of sibling projections in ``model`` that can be fused: (group, members)."""
    out = []
    for _, parent in model.named_modules():
        for names in GROUPS:
            members = [getattr(parent, n, None) for n in names] if isinstance(parent, nn.Module) else []
            if not members or any(m is None for m in members):
                continue
            if all(_is_plain_linear(m) for m in members):
                bases, loras = members, None
            elif all(_is_plain_lora(m) for m in members):
                bases, loras = [m.linear for m in members], members
                if len({m.lora_a.dtype for m in members}) > 1:
                    continue
            else:
                continue
            if len({b.weight.shape[1] for b in bases}) > 1 or len({"bias" in b for b in bases}) > 1 or len({b.weight.dtype for b in bases}) > 1:
                continue
            out.append((_Group(bases, loras), members))
    return out


def _member_call(self: Any, x: mx.array) -> mx.array:
    group, i = self._fused_slot
    if group.weight is None:
        return type(self).__mro__[1].__call__(self, x)
    y, z = group.output(x, i)
    if group.loras is None:
        return y
    b = self.lora_b if z.dtype == self.lora_b.dtype else self.lora_b.astype(z.dtype)
    return y + (self.scale * (z @ b)).astype(x.dtype)


@functools.cache
def _member_class(cls: type) -> type:
    return type(f"Fused{cls.__name__}", (cls,), {"__call__": _member_call})


class FusedDecoding:
    """What :func:`fused_decoding` yields: the groups, and the arrays a step takes as inputs."""

    def __init__(self, groups: list[_Group]) -> None:
        self.groups = groups

    def arrays(self) -> list[mx.array]:
        return [a for g in self.groups for a in g.arrays()]

    def bind(self, arrays: list[mx.array]) -> None:
        for g in self.groups:
            arrays = g.bind(arrays)

    def unbind(self) -> None:
        for g in self.groups:
            g.unbind()


def eager_enabled() -> bool:
    if EAGER is not None:
        return EAGER
    return mx.default_device() == mx.gpu


@contextmanager
def fused_decoding(model: nn.Module, enabled: bool | None = None) -> Iterator[FusedDecoding | None]:
    """Within: ``model``'s fusable projections compute through their group when a step has
    bound the group's arrays (``FusedDecoding.bind``). Yields None where nothing fuses.
    ``enabled`` defaults to ``ENABLED`` (compiled decoding)."""
    found = find_groups(model) if (ENABLED if enabled is None else enabled) else []
    if not found:
        yield None
        return
    switched: list[tuple[nn.Module, type]] = []
    try:
        for group, members in found:
            for i, m in enumerate(members):
                object.__setattr__(m, "_fused_slot", (group, i))
                switched.append((m, type(m)))
                m.__class__ = _member_class(type(m))
        yield FusedDecoding([g for g, _ in found])
    finally:
        for m, cls in switched:
            m.__class__ = cls
            object.__delattr__(m, "_fused_slot")


@contextmanager
def eager_fused_decoding(model: nn.Module) -> Iterator[bool]:
    """Within: every fusable group of ``model`` computes as one matmul, its arrays bound once
    (eager decoding: no trace to hand them to). Yields whether anything fused. The groups'
    last inputs and outputs are dropped on exit, so nothing of the rollout stays alive."""
    with fused_decoding(model, enabled=eager_enabled()) as fused:
        if fused is None:
            yield False
            return
        fused.bind(fused.arrays())
        try:
            yield True
        finally:
            fused.unbind()
