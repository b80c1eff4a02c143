"""Reward model runs: metrics, eval rows, and a checkpoint that PPO can load by path."""

from __future__ import annotations

import pytest

from engine.algorithms.dpo import pair_rows
from engine.data import load_pairs
from engine.errors import ModelError
from engine.presets import load_preset
from engine.reward_model import load_reward_model
from engine.run import Run
from tests.helpers import metrics_rows, quick_overrides


def test_reward_run_writes_trl_metrics_and_a_loadable_model(tmp_path):
    cfg = load_preset("tiny-reward", quick_overrides(tmp_path, steps=3, train__learning_rate=1e-2))
    summary = Run(cfg, out_dir=tmp_path / "rm").run()
    assert summary["status"] == "completed"
    rows = metrics_rows(tmp_path / "rm")
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        assert r["kl"] is None
        for key in ("accuracy", "margin", "mean_reward", "min_reward", "max_reward", "grad_norm", "tokens_per_sec"):
            assert isinstance(r[key], float), key
        assert r["reward"] == r["margin"]
        assert r["min_reward"] <= r["mean_reward"] <= r["max_reward"]
    final_eval = [r for r in rows if "eval/accuracy" in r][-1]

    # the saved model (adapters + head), loaded the way PPO loads it, reproduces the eval numbers
    rm, tok, _ = load_reward_model(tmp_path / "rm")
    pairs = load_pairs(str(tmp_path / "valid.jsonl"), tok, cfg.model.max_length)
    scores = rm.score_rows(pair_rows(pairs)).tolist()
    n = len(pairs)
    chosen, rejected = scores[:n], scores[n:]
    accuracy = sum(1 for c, r in zip(chosen, rejected, strict=True) if c > r) / n
    margin = sum(c - r for c, r in zip(chosen, rejected, strict=True)) / n
    assert final_eval["eval/accuracy"] == pytest.approx(accuracy)
    assert final_eval["eval/margin"] == pytest.approx(margin, abs=1e-4)
    assert final_eval["eval/max_reward"] == pytest.approx(max(scores), abs=1e-4)


def test_loading_something_that_is_not_a_reward_model_says_so(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_reward_model(tmp_path / "missing")
    dpo = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=1))
    Run(dpo, out_dir=tmp_path / "dpo").run()
    with pytest.raises(ModelError, match="reward"):
        load_reward_model(tmp_path / "dpo")


@pytest.mark.slow
def test_tiny_reward_reaches_high_held_out_accuracy(tmp_path):
    cfg = load_preset("tiny-reward", ["train.max_steps=100", "train.eval_every=0", "train.save_every=0"])
    assert Run(cfg, out_dir=tmp_path / "rm").run()["status"] == "completed"
    final = [r for r in metrics_rows(tmp_path / "rm") if "eval/accuracy" in r][-1]
    assert final["eval/accuracy"] > 0.65  # from 0.5 (chance); 0.72 seen at step 100
