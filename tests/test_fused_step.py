"""The compiled whole step (value+grad, clipping, optimizer update in one call; GPU default)
updates the weights exactly as the step-by-step path does, and a non-finite step changes nothing."""

from __future__ import annotations

from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from engine import compile as compile_cache
from engine.algorithms import base
from engine.algorithms.base import TrainContext
from engine.compile import release_compiled
from engine.distributed import World
from engine.errors import NonFiniteError
from engine.presets import load_preset


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)

    def __call__(self, x: mx.array) -> mx.array:
        return self.b(nn.gelu(self.a(x)))


class Loss:
    compilable = True  # as an algorithm class declares it

    def loss_fn(self, model: nn.Module, x: mx.array, y: mx.array, scale: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
        err = model(x) - y
        loss = (err * err).mean() * scale
        return loss, {"abs_err": mx.abs(err).mean()}


def make_ctx(overrides: list[str]) -> TrainContext:
    mx.random.seed(3)
    net = Net()
    mx.eval(net.parameters())
    cfg = load_preset("tiny-dpo", overrides)
    noop = lambda *a, **k: None  # noqa: E731
    ctx = TrainContext(cfg, SimpleNamespace(model=net, tokenizer=None), World(None, 0, 1), check=noop, phase=noop, log=noop, alert=noop, sample=noop)
    ctx.build_optimizer()
    return ctx


def batch(seed: int) -> tuple[mx.array, mx.array, mx.array]:
    rng = np.random.default_rng(seed)
    return mx.array(rng.normal(size=(5, 6)).astype(np.float32)), mx.array(rng.normal(size=(5, 3)).astype(np.float32)), mx.array(1.0)


def flat(tree) -> np.ndarray:
    from mlx.utils import tree_flatten

    return np.concatenate([np.array(v.astype(mx.float32)).ravel() for _, v in tree_flatten(tree)])


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_fused_step_updates_like_the_step_by_step_path(monkeypatch, opt):
    # a warm-up then cosine schedule: the traced step must see each step's learning rate
    overrides = [f"train.optimizer={opt}", "train.learning_rate=0.05", "train.max_grad_norm=0.5", "train.weight_decay=0.01", "train.lr_schedule=cosine", "train.warmup_steps=1", "train.max_steps=4"]
    loss = Loss()
    runs = {}
    for fused in (False, True):
        monkeypatch.setattr(base, "compile_pays", lambda enabled: True)
        monkeypatch.setattr(base, "FUSED_STEP", fused)
        ctx = make_ctx(overrides)
        losses = []
        for step in range(1, 5):
            ctx.step = step
            ctx.apply_schedule(step)
            value, aux, norm = ctx.update(loss.loss_fn, *batch(step))
            losses.append((value, aux["abs_err"], norm))
        runs[fused] = (losses, flat(ctx.trainable.parameters()))
        traced = [k for k in compile_cache._COMPILED if k[0] == id(ctx.trainable)]
        assert len(traced) == 1 and (len(traced[0]) > 3) == fused  # the whole step, or value-and-grad alone
        release_compiled(ctx.trainable)
    (eager_losses, eager_w), (fused_losses, fused_w) = runs[False], runs[True]
    # same float32 ops, possibly fused in another order: agreement to a few float32 ulps per op
    np.testing.assert_allclose(np.array(fused_losses), np.array(eager_losses), rtol=1e-4, atol=1e-6)
    assert np.abs(fused_w - eager_w).max() <= 1e-4 * max(1.0, np.abs(eager_w).max())
    # and the steps did move the weights (the first at learning rate 0: warm-up)
    monkeypatch.setattr(base, "FUSED_STEP", True)
    fresh = flat(make_ctx(overrides).trainable.parameters())
    assert np.abs(fused_w - fresh).max() > 1e-3


@pytest.mark.parametrize("on_nan", ["stop", "skip"])
def test_non_finite_fused_step_changes_no_weight_and_no_optimizer_state(monkeypatch, on_nan):
    monkeypatch.setattr(base, "compile_pays", lambda enabled: True)
    monkeypatch.setattr(base, "FUSED_STEP", True)
    ctx = make_ctx(["train.optimizer=adamw", "train.learning_rate=0.05", f"train.on_nan={on_nan}"])
    loss = Loss()
    ctx.step = 1
    ctx.update(loss.loss_fn, *batch(1))
    weights, state = flat(ctx.trainable.parameters()), flat({k: v for k, v in ctx.optimizer.state.items() if k != "learning_rate"})
    x, y, _ = batch(2)
    ctx.step = 2
    if on_nan == "stop":  # the run stops and saves nothing more: its last checkpoint is the good state
        with pytest.raises(NonFiniteError, match="step 2: loss is nan"):
            ctx.update(loss.loss_fn, x, y, mx.array(float("nan")))
        assert release_compiled(ctx.trainable) == 1
        return
    value, _, _ = ctx.update(loss.loss_fn, x, y, mx.array(float("nan")))
    assert np.isnan(value) and ctx.skipped_steps == 1
    np.testing.assert_array_equal(flat(ctx.trainable.parameters()), weights)
    np.testing.assert_array_equal(flat({k: v for k, v in ctx.optimizer.state.items() if k != "learning_rate"}), state)
    # the next finite step trains on from there
    ctx.step = 3
    ctx.update(loss.loss_fn, *batch(3))
    assert np.abs(flat(ctx.trainable.parameters()) - weights).max() > 1e-4
    assert release_compiled(ctx.trainable) == 1  # the fused step ran (traced once)


def test_compile_from_two_compiles_a_batch_shape_when_it_comes_again(monkeypatch):
    """With COMPILE_FROM = 2 (a lever for long-tailed data, where most steps bring a new shape
    and each costs a trace and a compile), a shape's first step runs eager and the trace is
    made on its second. Same updates either way."""
    monkeypatch.setattr(base, "compile_pays", lambda enabled: True)
    monkeypatch.setattr(base, "COMPILE_FROM", 2)
    monkeypatch.setattr(base, "FUSED_STEP", True)
    traced_calls: list[tuple[int, ...]] = []
    real_compile = compile_cache.mx.compile

    def counting_compile(fn, *args, **kwargs):
        compiled = real_compile(fn, *args, **kwargs)

        def call(*a):
            traced_calls.append(a[0].shape)
            return compiled(*a)

        return call

    monkeypatch.setattr(compile_cache.mx, "compile", counting_compile)
    rng = np.random.default_rng(0)

    def rows(n: int) -> tuple[mx.array, mx.array, mx.array]:
        return mx.array(rng.normal(size=(n, 6)).astype(np.float32)), mx.array(rng.normal(size=(n, 3)).astype(np.float32)), mx.array(1.0)

    batches = [rows(n) for n in (5, 7, 5, 5, 9, 7)]
    ctx, loss = make_ctx(["train.learning_rate=0.05"]), Loss()
    for step, b in enumerate(batches, 1):
        ctx.step = step
        ctx.update(loss.loss_fn, *b)
    assert traced_calls == [(5, 6), (5, 6), (7, 6)]  # the second and third 5-row steps, the second 7-row one
    compiled_w = flat(ctx.trainable.parameters())
    release_compiled(ctx.trainable)

    monkeypatch.setattr(base, "compile_pays", lambda enabled: False)
    eager = make_ctx(["train.learning_rate=0.05"])
    for step, b in enumerate(batches, 1):
        eager.step = step
        eager.update(loss.loss_fn, *b)
    assert np.abs(compiled_w - flat(eager.trainable.parameters())).max() <= 1e-4 * max(1.0, np.abs(compiled_w).max())

    # with accumulation each micro-batch counts its own shape: on step 2 the 4-row chunk (seen
    # on step 1) is compiled and the new 7-row one is not
    monkeypatch.setattr(base, "compile_pays", lambda enabled: True)
    traced_calls.clear()
    acc = make_ctx(["train.learning_rate=0.05"])
    for step, sizes in ((1, (5, 4)), (2, (4, 7))):
        acc.step = step
        acc.update_accumulated(loss.loss_fn, [(0.5, rows(n)) for n in sizes])
    assert traced_calls == [(4, 6)]
    release_compiled(acc.trainable)

    # COMPILE_FROM = 1 (the default) compiles every shape at its first step
    monkeypatch.setattr(base, "compile_pays", lambda enabled: True)
    monkeypatch.undo()
    monkeypatch.setattr(base, "compile_pays", lambda enabled: True)
    monkeypatch.setattr(base, "FUSED_STEP", True)
    monkeypatch.setattr(compile_cache.mx, "compile", counting_compile)
    assert base.COMPILE_FROM == 1
    traced_calls.clear()
    first = make_ctx(["train.learning_rate=0.05"])
    for step, b in enumerate(batches[:2], 1):
        first.step = step
        first.update(loss.loss_fn, *b)
    assert traced_calls == [(5, 6), (7, 6)]
    release_compiled(first.trainable)
