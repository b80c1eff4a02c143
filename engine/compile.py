"""Compiled forward+backward passes, and gradient checkpointing, as the config asks.

``train.compile`` compiles the loss's value-and-gradient with ``mx.compile`` where that
pays: on a GPU (Metal or CUDA), where fusing element-wise kernels saves launches. On the CPU
the first call of every new shape JIT-compiles C++ for tens of seconds and the steady state
gains little, so there it stays eager (see docs/performance.md). Batches are padded to
length buckets (engine.batching.BUCKET) so a compiled step sees few shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn

_COMPILED: dict[tuple[int, Any, int], Callable[..., Any]] = {}


def compile_pays(enabled: bool) -> bool:
    """Whether to compile the step: asked for, and running on a GPU."""
    return bool(enabled) and mx.default_device().type == mx.DeviceType.gpu


def value_and_grad_fn(module: nn.Module, loss_fn: Callable[..., Any], compiled: bool) -> Callable[..., Any]:
    """``f(*args) -> (loss_fn(module, *args), grads)``, compiled once per (module, loss) when asked.

    The module's state is both input and output of the compiled function, so the trace sees
    the current weights at every call and the module is left holding real arrays.
    """
    vag = nn.value_and_grad(module, loss_fn)
    # only losses whose algorithm says its step is safe to trace (no host reads inside, shapes
    # bucketed) are compiled: set ``compilable = True`` on the algorithm class
    if not getattr(getattr(loss_fn, "__self__", None), "compilable", False):
        compiled = False
    if not compiled:
        return lambda *args: vag(module, *args)
    key = (id(module), getattr(loss_fn, "__func__", loss_fn), id(getattr(loss_fn, "__self__", None)))
    fn = _COMPILED.get(key)
    if fn is None:
        state = module.state
        fn = mx.compile(lambda *args: vag(module, *args), inputs=state, outputs=state)
        _COMPILED[key] = fn
    return fn


def fused_step_fn(
    module: nn.Module, optimizer: Any, loss_fn: Callable[..., Any], max_norm: float, average: Callable[[Any], Any], *, keep_on_non_finite: bool = True
) -> Callable[..., Any] | None:
    """One compiled call for a whole optimizer step, or None where the loss may not be traced.

    ``f(*args) -> (loss, aux, grad_norm)``: value and gradient, the ranks' average
    (``average``), clipping to ``max_norm`` (0: none), and the optimizer update, traced once
    per (module, loss, optimizer). The host reads the loss once, after the step, instead of
    waiting between the backward pass and an update launched op by op (on a GPU that wait is
    the step's idle time; see docs/performance.md). With ``keep_on_non_finite`` a step whose
    loss or gradient norm is not finite changes nothing: the new weights and optimizer state
    are selected on the device (``mx.where(finite, new, old)``), which holds the old ones
    until the update is done (one more copy of what the optimizer updates: ``train.on_nan =
    "skip"`` needs it). Without it such a step's update is applied and the caller must stop
    the run without saving those weights (``train.on_nan = "stop"``: the last checkpoint is
    the good state).
    """
    if not getattr(getattr(loss_fn, "__self__", None), "compilable", False):
        return None
    # the optimizer's state dict is captured: a replaced one must not reuse this trace
    key = (id(module), getattr(loss_fn, "__func__", loss_fn), id(getattr(loss_fn, "__self__", None)), id(optimizer), id(optimizer.state), float(max_norm), keep_on_non_finite)
    fn = _COMPILED.get(key)
    if fn is not None:
        return fn
    import mlx.optimizers as optim
    from mlx.utils import tree_map

    vag = nn.value_and_grad(module, loss_fn)

    def step(*args: Any) -> tuple[Any, ...]:
        (loss, aux), grads = vag(module, *args)
        grads = average(grads)
        grads, norm = optim.clip_grad_norm(grads, max_norm if max_norm > 0 else float("inf"))
        if not keep_on_non_finite:
            optimizer.update(module, grads)
            return loss, aux, norm
        finite = mx.isfinite(loss) & mx.isfinite(norm)
        old_params = module.trainable_parameters()
        old_state = tree_map(lambda x: x, optimizer.state)
        optimizer.update(module, grads)
        module.update(tree_map(lambda new, old: mx.where(finite, new, old), module.trainable_parameters(), old_params))
        _select_in_place(optimizer.state, old_state, finite)  # in place: the compiled call writes back into these containers
        return loss, aux, norm

    state = [module.state, optimizer.state]
    fn = mx.compile(step, inputs=state, outputs=state)
    _COMPILED[key] = fn
    return fn


def _select_in_place(new: Any, old: Any, keep_new: mx.array) -> None:
    """Set every array leaf of the dict/list tree ``new`` to ``where(keep_new, new, old)``."""
    items = new.items() if isinstance(new, dict) else enumerate(new)
    for k, v in list(items):
        if isinstance(v, (dict, list)):
            _select_in_place(v, old[k], keep_new)
        elif isinstance(v, mx.array):
            new[k] = mx.where(keep_new, v, old[k])


def release_compiled(module: nn.Module) -> int:
    """Forget the compiled steps of ``module`` (a run calls this when it ends); returns how many.

    Each compiled step closes over its module, so a cache entry alone keeps a finished run's
    model, optimizer inputs and MLX buffers alive in a long-lived console; and a later module
    that happened to get the same ``id`` would be handed a step traced for the old one.
    """
    keys = [k for k in _COMPILED if k[0] == id(module)]
    for k in keys:
        del _COMPILED[k]
    return len(keys)


def enable_grad_checkpoint(model: nn.Module) -> bool:
    """Recompute each transformer block's activations in the backward pass (less memory).

    Patches the block class's ``__call__`` the way mlx-lm's tuner does; returns False when
    the model has no ``layers`` to checkpoint.
    """
    layers = getattr(model, "layers", None) or getattr(getattr(model, "model", None), "layers", None)
    if not layers:
        return False
    cls = type(layers[0])
    if getattr(cls, "_rlhf_tui_checkpointed", False):  # the class is patched: once is enough
        return True
    cls.__call__ = _checkpointed(cls.__call__)
    cls._rlhf_tui_checkpointed = True
    return True


def _checkpointed(call: Callable[..., Any]) -> Callable[..., Any]:
    """A block's ``__call__`` that recomputes its activations in the backward pass.

    Unlike mlx-lm's ``grad_checkpoint`` (which passes every argument through ``mx.checkpoint``):

    * the attention mask is closed over, not an input: nothing differentiates a mask, and the
      fused attention on CUDA refuses a VJP with respect to it;
    * a shared-prompt cache's prefix keys/values (the prompt pass's, computed with gradients)
      are explicit inputs, and the keys/values the block stores are explicit outputs, so the
      answers' gradients reach the prompt's layers (closed over, they would be constants and
      the prompt would silently get no gradient from the answers);
    * any other cache (generation) runs the block as it is: nothing is differentiated there.
    """
    from engine.logprobs import _PrefixCache

    def wrapped(self: nn.Module, x: mx.array, *args: Any, **kw: Any) -> mx.array:
        # blocks are called as block(x, mask, cache, ...) with mask and cache positional or by name
        mask = args[0] if args else kw.pop("mask", None)
        cache = args[1] if len(args) > 1 else kw.pop("cache", None)
        rest = args[2:]
        if cache is not None and not isinstance(cache, _PrefixCache):
            return call(self, x, mask, cache, *rest, **kw)
        if cache is None:

            def plain(params: Any, h: mx.array) -> mx.array:
                self.update(params)
                return call(self, h, mask, None, *rest, **kw)

            return mx.checkpoint(plain)(self.trainable_parameters(), x)
        prefix = cache.prefix or ()

        def shared(params: Any, h: mx.array, *pre: mx.array) -> tuple[mx.array, mx.array, mx.array]:
            self.update(params)
            inner = _PrefixCache(cache.mask, cache.offset, (pre[0], pre[1]) if pre else None)
            out = call(self, h, mask, inner, *rest, **kw)
            return out, inner.keys, inner.values  # type: ignore[return-value]

        out, cache.keys, cache.values = mx.checkpoint(shared)(self.trainable_parameters(), x, *prefix)
        return out

    return wrapped
