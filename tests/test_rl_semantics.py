"""RL semantics users bring from PyTorch and TRL: bias-corrected Adam, truncated GRPO
completions left out of the loss, and no greedy rollouts for sampling algorithms."""

from __future__ import annotations

import math
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import pytest

from engine.algorithms.base import TrainContext
from engine.config import RunConfig
from engine.presets import load_preset
from engine.rewards import register_reward, unregister_reward
from engine.run import Run
from tests.helpers import metrics_rows
from tests.test_grpo import grpo_overrides


def torch_adam(params: list[float], grads: list[list[float]], lr: float, wd: float, bias_correction: bool) -> list[float]:
    """torch.optim.AdamW's update, written out per scalar (betas 0.9, 0.999, eps 1e-8)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    m = [0.0] * len(params)
    v = [0.0] * len(params)
    p = list(params)
    for t, g in enumerate(grads, 1):
        for i, gi in enumerate(g):
            p[i] *= 1 - lr * wd
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            if bias_correction:
                p[i] -= lr * (m[i] / (1 - b1**t)) / (math.sqrt(v[i] / (1 - b2**t)) + eps)
            else:
                p[i] -= lr * m[i] / (math.sqrt(v[i]) + eps)
    return p


@pytest.mark.parametrize(("optimizer", "wd"), [("adamw", 0.1), ("adam", 0.0)])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_adam_matches_pytorch(optimizer, wd, bias_correction):
    cfg = RunConfig()
    cfg.train.optimizer, cfg.train.weight_decay, cfg.train.learning_rate = optimizer, wd, 0.01
    cfg.train.adam_bias_correction = bias_correction
    model = nn.Linear(3, 1, bias=False)
    model.weight = mx.array([[0.5, -0.2, 0.1]])
    ctx = TrainContext(cfg, SimpleNamespace(model=model, tokenizer=None), None, check=None, phase=None, log=None, alert=None, sample=None)  # type: ignore[arg-type]
    ctx.build_optimizer()
    grads = [[0.3, -0.01, 2.0], [0.1, 0.05, -1.0], [-0.2, 0.02, 0.5]]
    for g in grads:
        ctx.optimizer.update(model, {"weight": mx.array([g])})
    got = model.weight.reshape(-1).tolist()
    want = torch_adam([0.5, -0.2, 0.1], grads, 0.01, wd if optimizer == "adamw" else 0.0, bias_correction)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_bias_correction_is_the_default():
    assert RunConfig().train.adam_bias_correction is True
    # PyTorch's first Adam step moves each weight by about lr; without correction, by lr * 0.1 / sqrt(0.001)
    first = torch_adam([0.0], [[1.0]], 0.01, 0.0, True)[0]
    raw = torch_adam([0.0], [[1.0]], 0.01, 0.0, False)[0]
    assert first == pytest.approx(-0.01, rel=1e-6) and raw == pytest.approx(-0.01 * 0.1 / math.sqrt(0.001), rel=1e-6)


def test_grpo_leaves_truncated_completions_out_of_the_loss(tmp_path):
    """With max_new_tokens = 2 no completion reaches EOS: masked, the step moves nothing."""

    # a reward that tells two-token answers apart (the first letter's place in the alphabet)
    register_reward("first_letter_rank", replace=True)(lambda prompts, completions, extras: [ord(c[0]) - 96 if c else 0 for c in completions])

    def step_row(mask: bool, out: str) -> dict:
        sets = grpo_overrides(tmp_path, steps=1, train__eval_on_start="false")
        sets += ["generation.max_new_tokens=2", f"grpo.mask_truncated_completions={str(mask).lower()}", "grpo.reward_functions=first_letter_rank"]
        assert Run(load_preset("tiny-grpo", sets), out_dir=tmp_path / out).run()["status"] == "completed"
        return next(r for r in metrics_rows(tmp_path / out) if "loss" in r)

    try:
        masked = step_row(True, "masked")
        unmasked = step_row(False, "unmasked")
    finally:
        unregister_reward("first_letter_rank")
    assert masked["completions/clipped_ratio"] == 1.0 and masked["reward_std"] > 0
    assert masked["loss"] == 0.0 and masked["grad_norm"] == 0.0
    assert unmasked["completions/clipped_ratio"] == 1.0 and unmasked["grad_norm"] > 0.0


@pytest.mark.parametrize("preset", ["tiny-grpo", "tiny-ppo"])
def test_sampling_algorithms_refuse_temperature_0(tmp_path, preset):
    cfg = load_preset(preset, ["generation.temperature=0", "train.max_steps=1"])
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    assert summary["status"] == "failed"
    assert summary["error"].startswith("generation.temperature = 0: ") and "\n" not in summary["error"]
