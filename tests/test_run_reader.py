"""One rule for which trained weights a run directory or checkpoint folder means, and every
reader (engine.adapter_path, scoring, PPO's reward model, model.init_from) follows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine
from engine import scoring
from engine.errors import RunDirError
from engine.reward_model import find_reward_checkpoint
from engine.run_reader import resolve_weights
from engine.rundir import MANIFEST_NAME, file_entry


def weights(folder: Path, tag: str, *, complete: bool = True, head: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapters.safetensors").write_text(tag)
    (folder / "adapter_config.json").write_text(json.dumps({"model": "builtin:tiny-sorter", "fine_tune_type": "full"}))
    if head:
        (folder / "extra.safetensors").write_text(tag)
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"step": tag}))
        files = {f.name: file_entry(f) for f in sorted(folder.iterdir()) if f.is_file()}
        (folder / MANIFEST_NAME).write_text(json.dumps({"format": 1, "files": files}))
    return folder


def run_dir(tmp_path: Path) -> Path:
    """A run with checkpoints at steps 2 and 4, a step 6 being written (no trainer_state.json
    yet) and a root copy from step 2 (the process died before mirroring step 4)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('algorithm = "reward"\n')
    weights(run / "checkpoints" / "step-000002", "2")
    weights(run / "checkpoints" / "step-000004", "4")
    weights(run / "checkpoints" / "step-000006", "6", complete=False)
    weights(run, "2", head=False)
    return run


def test_a_run_means_its_newest_complete_checkpoint(tmp_path):
    run = run_dir(tmp_path)
    newest = run / "checkpoints" / "step-000004"
    found = resolve_weights(run)
    assert (found.folder, found.run_dir, found.step) == (newest, run, 4)
    # every reader agrees
    assert engine.adapter_path(run) == newest
    assert scoring.find_checkpoint(run) == (run, newest)
    assert find_reward_checkpoint(run) == newest


def test_a_step_or_a_checkpoint_folder_picks_that_checkpoint(tmp_path):
    run = run_dir(tmp_path)
    two = run / "checkpoints" / "step-000002"
    assert resolve_weights(run, 2).folder == two
    assert engine.adapter_path(run, 2) == two
    found = resolve_weights(two)
    assert (found.folder, found.run_dir, found.step) == (two, run, 2)
    assert scoring.find_checkpoint(two) == (run, two)
    with pytest.raises(RunDirError, match=r"no checkpoint for step 6 \(checkpoints: 2, 4\)"):
        resolve_weights(run, 6)  # not complete yet
    loose = weights(tmp_path / "exported", "x")
    assert resolve_weights(loose).run_dir is None and resolve_weights(loose).folder == loose


def test_a_newest_checkpoint_that_does_not_check_out_is_passed_over_by_every_reader(tmp_path):
    run = run_dir(tmp_path)
    (run / "checkpoints" / "step-000004" / "adapters.safetensors").write_text("5")  # one bit off, same size
    two = run / "checkpoints" / "step-000002"
    found = resolve_weights(run)
    assert found.folder == two and len(found.skipped) == 1 and "step 4" in found.skipped[0] and "sha256" in found.skipped[0]
    assert engine.adapter_path(run) == two and scoring.find_checkpoint(run) == (run, two) and find_reward_checkpoint(run) == two
    with pytest.raises(RunDirError, match="step 4 does not check out"):
        resolve_weights(run, 4)


def test_the_root_copy_counts_only_without_checkpoints_and_errors_are_one_line(tmp_path):
    run = tmp_path / "copied"
    run.mkdir()
    (run / "config.toml").write_text('algorithm = "dpo"\n')
    with pytest.raises(RunDirError, match="no weights yet"):
        resolve_weights(run)
    weights(run, "root", head=False)
    assert resolve_weights(run).folder == run and resolve_weights(run).step is None
    with pytest.raises(engine.ModelError, match="holds no reward-model checkpoint"):
        find_reward_checkpoint(run)  # the root copy has no reward head
    with pytest.raises(RunDirError, match="not found"):
        resolve_weights(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a run directory"):
        resolve_weights(tmp_path / "empty")


def test_following_a_run_yields_its_events_in_order_until_it_ends(tmp_path):
    import threading

    from engine import events as ev
    from engine.run_reader import EVENT_TYPES, RunFollower

    # every event the engine defines can be read back (no hand-kept list)
    defined = {n for n in dir(ev) if isinstance(getattr(ev, n), type) and issubclass(getattr(ev, n), ev.Event) and getattr(ev, n) is not ev.Event}
    assert defined <= set(EVENT_TYPES)
    (tmp_path / "events.log").write_text(json.dumps(ev.RunStarted("x", str(tmp_path), "dpo", 2, 0, 1, {}).to_dict()) + "\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n')

    def finish() -> None:
        with open(tmp_path / "metrics.jsonl", "a") as fh:
            fh.write('{"step": 2, "loss": 0.6}\n{"step": 2, "eval/rewards/accuracies": 0.75}\n')
        with open(tmp_path / "events.log", "a") as fh:
            fh.write(json.dumps(ev.RunFinished({"status": "completed", "steps": 2}).to_dict()) + "\n")

    follower = RunFollower(tmp_path)
    got = []
    for event in follower.follow(interval=0.01):
        got.append(event)
        if len(got) == 2:
            threading.Thread(target=finish).start()
    assert [(type(e).__name__, getattr(e, "step", None)) for e in got] == [
        ("RunStarted", None), ("StepMetrics", 1), ("StepMetrics", 2), ("EvalMetrics", 2), ("RunFinished", None),
    ]
    assert follower.ended
