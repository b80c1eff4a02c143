"""The built-in PPO preset raises its reward over a short run (last quarter vs first quarter)."""

from __future__ import annotations

import pytest

from engine.presets import load_preset
from engine.run import Run
from tests.test_grpo_preset import base_copies_letters, reward_quarters


def test_tiny_ppo_raises_its_reward(tmp_path):
    if not base_copies_letters():
        pytest.xfail("builtin:tiny-sorter does not answer with the prompt's letters yet, so sorted_letters has nothing to order")
    cfg = load_preset("tiny-ppo", ["train.max_steps=30", "train.eval_every=0", "train.save_every=0"])
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    first, last = reward_quarters(tmp_path / "run")
    assert last > first + 0.02, (first, last)
