"""A finished run leaves nothing in the compile cache: its model can be freed (a long-lived
console runs one run after another)."""

from __future__ import annotations

import gc
import weakref

import mlx.core as mx
import mlx.nn as nn

import engine.algorithms.base
import engine.compile
from engine.compile import _COMPILED, release_compiled, value_and_grad_fn
from engine.presets import load_preset
from engine.run import Run
from tests.helpers import quick_overrides


class _Loss:
    compilable = True

    def loss(self, model: nn.Module, x: mx.array) -> tuple[mx.array, dict]:
        return model(x).sum(), {}


def test_release_forgets_only_that_modules_steps():
    a, b, owner = nn.Linear(2, 2), nn.Linear(2, 2), _Loss()
    value_and_grad_fn(a, owner.loss, True)
    value_and_grad_fn(b, owner.loss, True)
    try:
        assert release_compiled(a) == 1
        assert not any(k[0] == id(a) for k in _COMPILED) and any(k[0] == id(b) for k in _COMPILED)
    finally:
        release_compiled(b)


def test_a_finished_runs_model_is_collectable(tmp_path, monkeypatch):
    # compile as on a GPU, but with a pass-through mx.compile: what is under test is who holds
    # the compiled step (and so the model), not MLX's compiler (tens of seconds on a CPU)
    monkeypatch.setattr(engine.algorithms.base, "compile_pays", lambda enabled: True)
    monkeypatch.setattr(engine.compile.mx, "compile", lambda fn, *args, **kwargs: fn)
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=2, train__eval_on_start="false", data__task_reward=""))
    run = Run(cfg, out_dir=tmp_path / "run")
    before = len(_COMPILED)
    seen: list[int] = []
    run.subscribe(lambda event: seen.append(len(_COMPILED)))
    summary = run.run()
    assert summary["status"] == "completed", summary.get("error")
    assert max(seen) == before + 1, "the step was compiled and cached while the run went"
    assert len(_COMPILED) == before, "the run's compiled step was released when it ended"
    model = weakref.ref(run.ctx.model)
    del run
    gc.collect()
    assert model() is None, "something still holds the finished run's model"
