"""GRPO and RLOO with everything compiled, as on a GPU (the decode step, the padded training
shapes and the whole optimizer step in one traced call): the same rollouts and the same
update as the eager path that the CPU runs.

Compiling fuses element-wise kernels (exp, log, the clipped ratio) whose float32 results
differ from the separate kernels' in the last bits, ~1e-6 of a value. A tensor whose
gradient is a small difference of large terms (a deep query projection's) carries that as a
larger share of its own small change, so the bound is taken against the largest change of
the whole model: 1e-3 of it, plus 4 ulps of the tensor's largest weight. A padding or mask
error moves the update by 10% or more of that scale."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engine import compile as compiling
from engine.algorithms import base, grpo
from tests.test_grad_accumulation_rl import (
    assert_same_metrics,
    initial_weights,
    prompt_data,
    run_once,
)


def assert_same_update(w0: dict, a: dict, b: dict) -> None:
    scale = max(float(mx.abs(a[k] - w0[k]).max().item()) for k in a)
    assert scale > 0, "the run must move the weights for the comparison to mean anything"
    eps = float(np.finfo(np.float32).eps)
    for k in a:
        ulps = 4 * eps * float(mx.abs(a[k]).max().item())
        assert float(mx.abs((a[k] - w0[k]) - (b[k] - w0[k])).max().item()) <= 1e-3 * scale + ulps, k


def _compiled_everywhere(monkeypatch, on: bool) -> None:
    for mod in (compiling, base, grpo):
        monkeypatch.setattr(mod, "compile_pays", lambda enabled, on=on: on)
    monkeypatch.setattr(base, "FUSED_STEP", on)


@pytest.mark.parametrize("preset,section", [("tiny-grpo", "grpo"), ("tiny-rloo", "rloo")])
def test_compiled_rl_step_equals_the_eager_step(tmp_path, monkeypatch, preset, section):
    # two steps, two passes over each step's rollouts (old log-probs, clipping) and a KL term
    over = [*prompt_data(tmp_path), "train.max_steps=2", "train.batch_size=2", f"{section}.num_generations=4",
            f"{section}.num_iterations=2", f"{section}.beta=0.1", "train.learning_rate=0.05", "train.seed=2"]
    w0 = initial_weights(tmp_path, preset, over)
    _compiled_everywhere(monkeypatch, False)
    eager, a = run_once(tmp_path, preset, "eager", over)
    _compiled_everywhere(monkeypatch, True)
    traced, b = run_once(tmp_path, preset, "compiled", over)
    for ra, rb in zip(a, b, strict=True):  # the compiled decode step drew the same completions
        assert rb["completions/mean_length"] == ra["completions/mean_length"] and rb["reward"] == ra["reward"]
    assert_same_update(w0, eager, traced)
    assert_same_metrics(a, b, ("loss", "grad_norm", "kl", "entropy", "clip_ratio/region_mean", "reward_std"))
    assert all(r["reward_std"] > 0 for r in a), "every step needs distinct rewards, else its advantages are float noise"
