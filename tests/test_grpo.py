"""GRPO end to end on the tiny model: TRL metrics, group statistics, KL term, samples, registry."""

from __future__ import annotations

import json
import math

import pytest

from engine.presets import builtin_dir, load_preset
from engine.rewards import register_reward, unregister_reward
from engine.run import Run
from tests.helpers import metrics_rows, quick_overrides

GRPO_KEYS = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio",
             "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "entropy")


def grpo_overrides(tmp_path, steps=2, **extra):
    base = [o for o in quick_overrides(tmp_path, steps=steps, **extra) if not o.startswith(("data.train=", "data.eval="))]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join((builtin_dir() / "data" / "sort_prompts.jsonl").read_text().splitlines(keepends=True)[:16]))
    return base + [f"data.train={prompts}", f"data.eval={prompts}", "data.max_eval_examples=4",
                   "generation.max_new_tokens=8", "grpo.num_generations=4", "train.batch_size=2"]


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_metrics_and_samples(tmp_path, loss_type):
    cfg = load_preset("tiny-grpo", grpo_overrides(tmp_path, grpo__loss_type=loss_type, grpo__beta=0.1, grpo__num_iterations=2))
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    rows = metrics_rows(tmp_path / "run")
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        for key in GRPO_KEYS:
            assert isinstance(r[key], float) and math.isfinite(r[key]), key
        assert r["kl"] is not None and r["kl"] >= 0  # k3 with beta > 0
        assert 0 <= r["frac_reward_zero_std"] <= 1 and 0 <= r["completions/clipped_ratio"] <= 1
        assert 1 <= r["completions/mean_length"] <= 8
        assert r["rewards/sorted_letters/mean"] == pytest.approx(r["reward"])
    # step 1's first pass is the reference itself (KL 0); its second pass, after one update, has drifted
    assert train[0]["kl"] > 0
    assert any("eval/reward" in r for r in rows)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["prompt"].startswith("sort:") for s in samples)
    # the best sample of a group has the largest advantage of the pair emitted
    first = [s for s in samples if s["step"] == 1]
    if len(first) == 2:
        assert (first[0]["score"] >= first[1]["score"]) and first[0]["advantage"] >= first[1]["advantage"]


def test_without_beta_there_is_no_kl_and_user_rewards_are_summed(tmp_path):
    @register_reward("always_two", "a constant")
    def always_two(prompts, completions, extras):
        return [2.0] * len(completions)

    try:
        cfg = load_preset("tiny-grpo", grpo_overrides(tmp_path, steps=1, grpo__reward_functions="sorted_letters, always_two"))
        assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    finally:
        unregister_reward("always_two")
    row = [r for r in metrics_rows(tmp_path / "run") if "loss" in r][0]
    assert row["kl"] is None
    assert row["rewards/always_two/mean"] == 2.0
    assert row["reward"] == pytest.approx(2.0 + row["rewards/sorted_letters/mean"])


def test_unknown_reward_function_fails_with_the_key_and_choices(tmp_path):
    cfg = load_preset("tiny-grpo", grpo_overrides(tmp_path, steps=1, grpo__reward_functions="sorted_letters,typo"))
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    assert summary["status"] == "failed"
    assert "grpo.reward_functions" in summary["error"] and "'typo'" in summary["error"]


def test_cancel_and_pause_take_effect_inside_generation(tmp_path):
    import threading

    from engine import events as ev

    # cancel: asked for as the first generation starts; the run stops before step 1 completes
    cfg = load_preset("tiny-grpo", grpo_overrides(tmp_path, steps=3))
    run = Run(cfg, out_dir=tmp_path / "cancelled")
    run.subscribe(lambda e: run.cancel() if isinstance(e, ev.PhaseChanged) and e.phase == "generating" and e.done == 0 else None)
    summary = run.run()
    assert summary["status"] == "cancelled" and summary["steps"] == 0

    # pause: taken inside step 1's generation (step still 0), then resumed to the end
    run = Run(cfg, out_dir=tmp_path / "paused")
    paused_at: list[int] = []
    resumed = threading.Event()

    def on_event(e):
        if isinstance(e, ev.PhaseChanged) and e.phase == "generating" and e.done == 0 and not paused_at:
            run.pause()
        if isinstance(e, ev.RunPaused):
            paused_at.append(e.step)
            threading.Timer(0.05, lambda: (run.resume(), resumed.set())).start()

    run.subscribe(on_event)
    summary = run.run()
    assert paused_at == [0] and resumed.is_set()
    assert summary["status"] == "completed" and summary["steps"] == 3
