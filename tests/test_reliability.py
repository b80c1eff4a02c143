"""Faults that must not lose work: NaN, a full disk, SIGKILL, and resume equivalence."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import mlx.core as mx
import pytest

from engine import events as ev
from engine.algorithms.dpo import Dpo
from engine.presets import load_preset
from engine.run import Run, resume_run
from engine.rundir import RunDirectory, read_jsonl
from tests.helpers import ROOT, metrics_rows, quick_overrides


def _poison_step(monkeypatch, bad_step: int):
    """Make the loss NaN at one step, through the real value_and_grad path."""
    original = Dpo.loss_fn

    def loss_fn(self, model, *args):
        loss, aux = original(self, model, *args)
        if self.ctx.step == bad_step:
            loss = loss * mx.array(float("nan"))
        return loss, aux

    monkeypatch.setattr(Dpo, "loss_fn", loss_fn)


def test_nan_stops_with_the_last_good_checkpoint_intact(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 3)
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=6, train__save_every=2))
    run = Run(cfg, out_dir=tmp_path / "run")
    failures = []
    run.subscribe(lambda e: failures.append(e) if isinstance(e, ev.RunFailed) else None)
    summary = run.run()
    assert summary["status"] == "failed" and summary["steps"] == 2
    assert "step 3: loss is nan" in summary["error"] and "last good checkpoint" in summary["error"]
    assert failures and failures[0].bad_input
    d = RunDirectory(tmp_path / "run")
    assert [s for s, _ in d.checkpoint_dirs()] == [2]
    # the weights of step 2 are what the checkpoint holds: finite
    weights = mx.load(str(d.path / "checkpoints" / "step-000002" / "adapters.safetensors"))
    assert all(mx.isfinite(v).all().item() for v in weights.values())


def test_nan_skip_mode_skips_the_step_and_alerts(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 2)
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=4, train__on_nan="skip"))
    run = Run(cfg, out_dir=tmp_path / "run")
    alerts = []
    run.subscribe(lambda e: alerts.append(e.text) if isinstance(e, ev.Alert) else None)
    summary = run.run()
    assert summary["status"] == "completed" and summary["skipped_steps"] == 1
    assert any("step 2: loss is nan; update skipped" in a for a in alerts)
    weights = mx.load(str(tmp_path / "run" / "adapters.safetensors"))
    assert all(mx.isfinite(v).all().item() for v in weights.values())


def test_full_disk_while_checkpointing_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=6, train__save_every=2))
    real_save = mx.save_safetensors
    calls = {"n": 0}

    def save(path, arrays, metadata=None):
        if "step-000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        calls["n"] += 1
        return real_save(path, arrays) if metadata is None else real_save(path, arrays, metadata)

    monkeypatch.setattr(mx, "save_safetensors", save)
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    assert summary["status"] == "failed"
    assert "step-000004: cannot write checkpoint (No space left on device)" in summary["error"]
    d = RunDirectory(tmp_path / "run")
    assert [s for s, _ in d.checkpoint_dirs()] == [2]
    assert not [p for p in d.checkpoints.iterdir() if p.name.startswith(".tmp")]
    assert json.loads((d.path / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_resume_ends_where_a_straight_run_ends(tmp_path):
    common = quick_overrides(tmp_path, steps=40, train__save_every=20, model__adapter="lora", train__learning_rate=1e-3)
    straight = Run(load_preset("tiny-dpo", common), out_dir=tmp_path / "straight")
    assert straight.run()["status"] == "completed"

    first = Run(load_preset("tiny-dpo", [*common, "train.max_steps=20"]), out_dir=tmp_path / "split")
    assert first.run()["status"] == "completed"
    resumed = resume_run(tmp_path / "split", ["train.max_steps=40"])
    assert resumed.run()["status"] == "completed"

    a = {r["step"]: r for r in metrics_rows(tmp_path / "straight") if "loss" in r}
    b = {r["step"]: r for r in metrics_rows(tmp_path / "split") if "loss" in r}
    assert sorted(b) == list(range(1, 41)) == sorted(a)
    for step in (21, 30, 40):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=0.03, abs=1e-3)
    wa = mx.load(str(tmp_path / "straight" / "adapters.safetensors"))
    wb = mx.load(str(tmp_path / "split" / "adapters.safetensors"))
    for k in wa:
        assert mx.allclose(wa[k], wb[k], rtol=1e-3, atol=1e-5).item(), k


@pytest.mark.slow
def test_sigkill_mid_training_then_resume(tmp_path):
    run_dir = tmp_path / "r"
    sets = []
    for o in quick_overrides(tmp_path, steps=100000, train__save_every=3):
        sets += ["--set", o]
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_tui", "run", "tiny-dpo", *sets, "--out", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.time() + 600  # generous: a loaded machine starts slowly
    try:
        while time.time() < deadline and not (run_dir / "checkpoints" / "step-000006" / "trainer_state.json").exists():
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    d = RunDirectory(run_dir)
    last, _ = d.latest_checkpoint()
    assert last >= 6
    raw = (run_dir / "metrics.jsonl").read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1].decode().splitlines()
    assert all("step" in json.loads(line) for line in complete)  # no torn line among complete ones
    out = subprocess.run([sys.executable, "-m", "rlhf_tui", "resume", str(run_dir), "--set", f"train.max_steps={last + 3}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, last + 4))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert f"resumed from {run_dir}/checkpoints/step-{last:06d}" in out.stdout
