"""A Run end to end: it learns, writes its directory, and obeys pause and cancel."""

from __future__ import annotations

import json
import threading
import time

import mlx.core as mx
import pytest

from engine import events as ev
from engine.presets import load_preset
from engine.run import Run
from tests.helpers import metrics_rows, quick_overrides


def test_lora_step_moves_the_adapters_and_only_them(tmp_path):
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=1, model__adapter="lora", train__learning_rate=1e-2))
    run = Run(cfg, out_dir=tmp_path / "run")
    assert run.run()["status"] == "completed"
    saved = mx.load(str(tmp_path / "run" / "adapters.safetensors"))
    lora_b = {k: v for k, v in saved.items() if k.endswith("lora_b")}
    assert lora_b and all(k.endswith(("lora_a", "lora_b")) for k in saved)
    # lora_b starts at zero: after one step every adapter's B must have moved
    moved = [k for k, v in lora_b.items() if float(mx.abs(v).max().item()) > 0]
    assert sorted(moved) == sorted(lora_b)


def test_full_step_changes_the_weights(tmp_path):
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load

    from engine.builtin import builtin_model_path

    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=1, model__adapter="full"))
    run = Run(cfg, out_dir=tmp_path / "run")
    assert run.run()["status"] == "completed"
    base, _ = load(str(builtin_model_path()))
    before = dict(tree_flatten(base.parameters()))
    after = mx.load(str(tmp_path / "run" / "adapters.safetensors"))
    assert set(after) == set(before)
    changed = [k for k in before if not mx.array_equal(before[k], after[k]).item()]
    assert len(changed) == len(before), "every weight gets a gradient in a full fine-tune"


def test_run_directory_contents(tmp_path):
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=3, train__eval_every=2, train__save_every=2))
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    d = tmp_path / "run"
    assert summary["status"] == "completed" and summary["steps"] == 3 and summary["world_size"] == 1
    assert json.loads((d / "summary.json").read_text())["status"] == "completed"
    rows = metrics_rows(d)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert [r["step"] for r in eval_rows] == [0, 2, 3]  # step 0: the starting model (train.eval_on_start)
    for r in train_rows:
        for key in ("loss", "kl", "reward", "tokens_per_sec", "elapsed_s", "learning_rate", "grad_norm",
                    "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
            assert key in r, key
        assert r["reward"] == pytest.approx(r["rewards/margins"])
        assert r["rewards/margins"] == pytest.approx(r["rewards/chosen"] - r["rewards/rejected"], abs=1e-5)
        assert r["tokens_per_sec"] > 0
    assert "eval/rewards/accuracies" in eval_rows[-1]
    assert [p.name for p in sorted((d / "checkpoints").iterdir())] == ["step-000002", "step-000003"]
    toml = (d / "config.toml").read_text()
    assert 'algorithm = "dpo"' in toml and "max_steps = 3" in toml
    events = [json.loads(x)["event"] for x in (d / "events.log").read_text().splitlines()]
    assert events[0] == "PhaseChanged" and "RunStarted" in events and events[-1] == "RunFinished"


@pytest.mark.slow
def test_builtin_dpo_raises_held_out_accuracy(tmp_path):
    """The built-in default learns: held-out preference accuracy climbs well above chance."""
    cfg = load_preset("tiny-dpo", ["train.max_steps=100", "train.eval_every=20", "train.save_every=0"])
    run = Run(cfg, out_dir=tmp_path / "run")
    assert run.run()["status"] == "completed"
    accs = [r["eval/rewards/accuracies"] for r in metrics_rows(tmp_path / "run") if "eval/rewards/accuracies" in r]
    assert len(accs) == 6  # steps 0, 20, ..., 100
    assert accs[-1] >= 0.75, accs
    assert accs[-1] > accs[0], accs


def _run_in_thread(cfg, out):
    run = Run(cfg, out_dir=out)
    seen: list[ev.Event] = []
    cond = threading.Condition()

    def collect(e):
        with cond:
            seen.append(e)
            cond.notify_all()

    run.subscribe(collect)
    run.start()
    return run, seen, cond


def _wait_for(cond, seen, pred, timeout=120):
    deadline = time.time() + timeout
    with cond:
        while not any(pred(e) for e in seen):
            assert cond.wait(max(deadline - time.time(), 0.01)) or time.time() < deadline, "timed out"


def test_pause_holds_the_step_and_resume_continues(tmp_path):
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=6))
    run, seen, cond = _run_in_thread(cfg, tmp_path / "run")
    _wait_for(cond, seen, lambda e: isinstance(e, ev.StepMetrics) and e.step >= 1)
    run.pause()
    _wait_for(cond, seen, lambda e: isinstance(e, ev.RunPaused))
    held = run.step
    time.sleep(0.6)
    assert run.step == held and run.status == "paused"
    run.resume()
    run.join(120)
    assert run.status == "completed" and run.step == 6
    assert any(isinstance(e, ev.RunResumed) for e in seen)


def test_cancel_stops_within_a_step_and_checkpoints(tmp_path):
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=500))
    run, seen, cond = _run_in_thread(cfg, tmp_path / "run")
    _wait_for(cond, seen, lambda e: isinstance(e, ev.StepMetrics) and e.step >= 2)
    run.cancel()
    at_cancel = run.step
    run.join(60)
    assert run.status == "cancelled"
    assert run.step <= at_cancel + 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "cancelled" and summary["steps"] == run.step
    assert (tmp_path / "run" / "checkpoints" / f"step-{run.step:06d}" / "trainer_state.json").exists()
    assert isinstance(seen[-1], ev.RunCancelled)


def test_learning_rate_follows_the_schedule_by_step(tmp_path):
    import math

    steps, warm, peak = 10, 2, 1e-3
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=steps, train__lr_schedule="cosine",
                                                  train__warmup_steps=warm, train__learning_rate=peak))
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    got = [r["learning_rate"] for r in metrics_rows(tmp_path / "run") if "loss" in r]

    def want(step):  # step is 1-based; warm-up from 0, then cosine over the remaining steps
        i = step - 1
        if i < warm:
            return peak * i / warm
        return peak * 0.5 * (1 + math.cos(math.pi * (i - warm) / (steps - warm)))

    assert got == pytest.approx([want(s) for s in range(1, steps + 1)], rel=1e-4, abs=1e-9)
