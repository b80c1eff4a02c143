"""RLOO: the leave-one-out baseline and KL-in-reward against formulas written here, a
step that moves the weights, and the built-in preset running."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from engine.algorithms.rloo import leave_one_out_advantages
from engine.presets import load_preset
from engine.run import Run
from tests.helpers import metrics_rows


def prompt_overrides(tmp_path, steps: int, **extra: object) -> list[str]:
    from engine.presets import builtin_dir

    src = builtin_dir() / "data"
    train, evalf = tmp_path / "p.jsonl", tmp_path / "pe.jsonl"
    train.write_text("".join((src / "sort_prompts.jsonl").read_text().splitlines(keepends=True)[:16]))
    evalf.write_text("".join((src / "sort_prompts_eval.jsonl").read_text().splitlines(keepends=True)[:8]))
    out = [f"data.train={train}", f"data.eval={evalf}", f"train.max_steps={steps}", "train.batch_size=2", "rloo.num_generations=4",
           "train.eval_every=0", "train.save_every=0", "generation.max_new_tokens=8"]
    return out + [f"{k.replace('__', '.')}={v}" for k, v in extra.items()]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_leave_one_out_baseline_is_the_mean_of_the_others(k):
    rng = np.random.default_rng(k)
    r = rng.normal(size=4 * k)
    got = np.array(leave_one_out_advantages(mx.array(r.astype(np.float32)), k).tolist())
    want = []
    for g in range(4):
        group = r[g * k : (g + 1) * k]
        want += [group[i] - np.mean(np.delete(group, i)) for i in range(k)]
    assert got == pytest.approx(np.array(want), rel=1e-5, abs=1e-5)
    # equivalently k/(k-1) * (r - group mean): zero-sum within each group
    assert got.reshape(4, k).sum(axis=1) == pytest.approx(np.zeros(4), abs=1e-5)


def test_one_step_moves_every_weight_and_logs_trl_metrics(tmp_path):
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load

    from engine.builtin import builtin_model_path

    cfg = load_preset("tiny-rloo", prompt_overrides(tmp_path, steps=1, train__eval_on_start="false", train__learning_rate=1e-3))
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    base, _ = load(str(builtin_model_path()))
    before = dict(tree_flatten(base.parameters()))
    after = mx.load(str(tmp_path / "run" / "adapters.safetensors"))
    changed = [k for k in before if not mx.array_equal(before[k], after[k]).item()]
    # a whole group scoring alike has zero advantage; with 2 prompts x 4 samples some differ
    assert len(changed) == len(before), "the model must run inside the differentiated loss"
    row = [r for r in metrics_rows(tmp_path / "run") if "loss" in r][0]
    for key in ("reward", "reward_std", "frac_reward_zero_std", "entropy", "completions/mean_length", "completions/clipped_ratio", "rewards/sorted_letters/mean"):
        assert math.isfinite(row[key]), key
    assert row["kl"] is None  # tiny-rloo keeps no reference (rloo.beta = 0)


def test_kl_penalty_is_logged_and_starts_at_zero(tmp_path):
    """With beta > 0 the first step's policy *is* the reference: its KL is exactly 0."""
    cfg = load_preset("tiny-rloo", prompt_overrides(tmp_path, steps=3, rloo__beta=0.1, rloo__num_iterations=2))
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    rows = [r for r in metrics_rows(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert all(r["kl"] is not None and math.isfinite(r["kl"]) for r in rows)
    evals = [r for r in metrics_rows(tmp_path / "run") if "eval/reward" in r]
    assert [r["step"] for r in evals] == [0, 3] and all("eval/task_score" in r for r in evals)
