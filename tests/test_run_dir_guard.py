"""A run directory holds one run, written by one process (issue 21).

A new run refuses a folder that holds a run unless told to replace it; a second writer is
turned away while the first holds the lock; resume takes only a checkpoint that proves it
is whole and only with settings that mean the same run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine
from engine.errors import RunDirError
from engine.presets import load_preset
from engine.run import Run
from tests.helpers import cli, metrics_rows, quick_overrides


def _quick(tmp_path: Path, steps: int = 2, **extra: object) -> list[str]:
    return quick_overrides(tmp_path, steps=steps, train__eval_on_start="false", **extra)


def _stderr_lines(out) -> list[str]:  # noqa: ANN001
    return [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("note:")]


def test_a_new_run_refuses_a_directory_holding_a_run_and_overwrite_replaces_it(tmp_path):
    rr = tmp_path / "rr"
    first = Run(load_preset("tiny-sft", _quick(tmp_path, 2)), out_dir=rr)
    assert first.run()["status"] == "completed"
    (rr / "notes.txt").write_text("the user's own file\n")
    before = {name: (rr / name).read_bytes() for name in ("summary.json", "metrics.jsonl", "config.toml", "adapters.safetensors")}

    # the CLI: exit 2, one line naming what is there and the two ways on
    sets = [a for o in _quick(tmp_path, 2) for a in ("--set", o)]
    out = cli("run", "tiny-dpo", *sets, "--out", str(rr), "--quiet", timeout=120)
    assert out.returncode == 2, out.stderr
    lines = _stderr_lines(out)
    assert len(lines) == 1, out.stderr
    assert "already holds a run (sft, 2/2 steps, completed)" in lines[0]
    assert f"rlhf-tui resume {rr}" in lines[0] and "--overwrite" in lines[0]
    assert "Traceback" not in out.stderr

    # the Python API: the run fails with the same message and writes nothing
    refused = engine.train("tiny-dpo", overrides=_quick(tmp_path, 2), out_dir=rr)
    assert refused.status == "failed" and "already holds a run" in refused.summary["error"]
    assert {name: (rr / name).read_bytes() for name in before} == before

    # overwrite=True replaces the old run's files, and only those
    replaced = engine.train("tiny-dpo", overrides=_quick(tmp_path, 3), out_dir=rr, overwrite=True)
    assert replaced.status == "completed", replaced.summary.get("error")
    assert (rr / "notes.txt").read_text() == "the user's own file\n"
    rows = [r for r in metrics_rows(rr) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all("rewards/accuracies" in r for r in rows)  # DPO rows only: no SFT row left behind
    summary = json.loads((rr / "summary.json").read_text())
    assert summary["algorithm"] == "dpo" and summary["steps"] == 3
    assert [p.name for p in sorted((rr / "checkpoints").iterdir())] == ["step-000003"]


def test_an_empty_or_unrelated_folder_is_used_as_it_is(tmp_path):
    rr = tmp_path / "mine"
    rr.mkdir()
    (rr / "train_labels.jsonl").write_text("")  # e.g. what the labelling screen puts there first
    run = Run(load_preset("tiny-sft", _quick(tmp_path, 1)), out_dir=rr)
    assert run.run()["status"] == "completed"
    assert (rr / "train_labels.jsonl").exists()


def test_the_console_asks_before_replacing_a_run(tmp_path):
    import asyncio

    from rlhf_tui.app import make_app
    from rlhf_tui.screens.dialogs import ConfirmScreen
    from rlhf_tui.screens.monitor import MonitorScreen
    from tests.helpers import wait_until

    rr = tmp_path / "chosen"
    assert Run(load_preset("tiny-sft", _quick(tmp_path, 1)), out_dir=rr).run()["status"] == "completed"
    summary_before = (rr / "summary.json").read_bytes()
    cfg = load_preset("tiny-sft", _quick(tmp_path, 2))

    async def scenario() -> None:
        app = make_app("tiny-sft", runs_root=str(tmp_path / "runs"))
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            app.start_run(cfg, out_dir=str(rr))
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen)
            assert "already holds a run" in app.screen.question
            assert "sft, 1/1 steps, completed" in app.screen.detail
            await pilot.press("n")
            await pilot.pause()
            assert app.active_run is None and not isinstance(app.screen, ConfirmScreen)
            assert (rr / "summary.json").read_bytes() == summary_before

            app.start_run(cfg, out_dir=str(rr))
            await pilot.pause()
            await pilot.press("y")
            await wait_until(pilot, lambda: app.active_run is not None and not app.active_run.running, 120, "the run to end")
            assert isinstance(app.screen, MonitorScreen)
            assert app.active_run.status == "completed", app.active_run.summary.get("error")

    asyncio.run(scenario())
    assert json.loads((rr / "summary.json").read_text())["steps"] == 2


def test_a_second_writer_is_turned_away_naming_the_first_and_touches_nothing(tmp_path):
    import os
    import socket

    from engine.dir_lock import DirLock
    from engine.run import resume_run

    rr = tmp_path / "rr"
    assert Run(load_preset("tiny-sft", _quick(tmp_path, 2)), out_dir=rr).run()["status"] == "completed"
    files = {p.relative_to(rr): p.read_bytes() for p in rr.rglob("*") if p.is_file() and p.name != "run.lock"}
    with DirLock(rr):  # the first writer (a lock is per open file, so this process counts as another)
        for second in (
            resume_run(rr, ["train.max_steps=4"]),
            Run(load_preset("tiny-sft", _quick(tmp_path, 2)), out_dir=rr, overwrite=True),
        ):
            summary = second.run()
            assert summary["status"] == "failed"
            assert f"another process is writing this run (pid {os.getpid()} on host {socket.gethostname()}" in summary["error"]
        # neither the resume nor the overwrite wrote or deleted anything
        assert {p.relative_to(rr): p.read_bytes() for p in rr.rglob("*") if p.is_file() and p.name != "run.lock"} == files
    # the first writer is gone: the directory is free again (no stale lock to clear)
    resumed = resume_run(rr, ["train.max_steps=3"])
    assert resumed.run()["status"] == "completed", resumed.summary.get("error")
    assert [r["step"] for r in metrics_rows(rr) if "loss" in r] == [1, 2, 3]
    with DirLock(rr):  # and the resume let go of it when it ended
        pass


def _lines_of(run) -> list[str]:  # noqa: ANN001
    from engine import events as ev

    lines: list[str] = []
    run.subscribe(lambda e: lines.append(e.text) if isinstance(e, ev.LogLine) else None)
    return lines


def test_each_checkpoint_ends_with_a_manifest_of_its_files(tmp_path):
    import hashlib

    rr = tmp_path / "rr"
    assert Run(load_preset("tiny-sft", _quick(tmp_path, 2, train__save_every=1)), out_dir=rr).run()["status"] == "completed"
    for ckpt in sorted((rr / "checkpoints").iterdir()):
        manifest = json.loads((ckpt / "manifest.json").read_text())
        on_disk = sorted(p.name for p in ckpt.iterdir() if p.name != "manifest.json")
        assert sorted(manifest["files"]) == on_disk and "adapters.safetensors" in on_disk
        for name, entry in manifest["files"].items():
            data = (ckpt / name).read_bytes()
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_resume_skips_a_torn_checkpoint_and_a_failed_resume_keeps_the_record(tmp_path):
    from engine.run import resume_run

    rr = tmp_path / "rr"
    assert Run(load_preset("tiny-sft", _quick(tmp_path, 4, train__save_every=2)), out_dir=rr).run()["status"] == "completed"
    torn = rr / "checkpoints" / "step-000004" / "adapters.safetensors"
    size = torn.stat().st_size
    torn.write_bytes(torn.read_bytes()[: size // 2])  # a copy cut short

    resumed = resume_run(rr, ["train.max_steps=6"])
    lines = _lines_of(resumed)
    assert resumed.run()["status"] == "completed", resumed.summary.get("error")
    assert f"skipped checkpoint step-000004: adapters.safetensors is {size // 2} bytes, the manifest says {size}" in lines
    assert any(line.startswith("resumed from") and "step-000002 (step 2)" in line for line in lines)
    assert [r["step"] for r in metrics_rows(rr) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    good = json.loads((rr / "summary.json").read_text())
    assert good["status"] == "completed" and good["steps"] == 6
    assert [(a["status"], a["resumed_from"], a["steps"]) for a in good["attempts"]] == [("completed", 2, 6)]

    # now every checkpoint is damaged: one bit flipped in each (a sync tool, a bad disk)
    for ckpt in (rr / "checkpoints").iterdir():
        f = ckpt / "adapters.safetensors"
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    keep = {name: (rr / name).read_bytes() for name in ("config.toml", "metrics.jsonl")}
    out = cli("resume", str(rr), "--set", "train.max_steps=8", timeout=120)
    assert out.returncode == 2, out.stderr
    lines = _stderr_lines(out)
    assert len(lines) == 1 and lines[0].startswith(f"rlhf-tui: error: {rr}: no intact checkpoint to resume from (")
    assert "step-000006: adapters.safetensors does not match its sha256 in the manifest" in lines[0]
    assert "skipped checkpoint step-000006" in out.stdout
    after = json.loads((rr / "summary.json").read_text())
    assert {k: v for k, v in after.items() if k != "attempts"} == {k: v for k, v in good.items() if k != "attempts"}
    assert [a["status"] for a in after["attempts"]] == ["completed", "failed"]
    assert "no intact checkpoint" in after["attempts"][-1]["error"] and after["attempts"][-1]["resumed_from"] is None
    assert {name: (rr / name).read_bytes() for name in keep} == keep  # max_steps=8 was not recorded


def test_a_checkpoint_from_before_manifests_is_used_when_it_loads_and_said_so(tmp_path):
    from engine.run import resume_run

    rr = tmp_path / "rr"
    assert Run(load_preset("tiny-sft", _quick(tmp_path, 4, train__save_every=2)), out_dir=rr).run()["status"] == "completed"
    for ckpt in (rr / "checkpoints").iterdir():
        (ckpt / "manifest.json").unlink()
    newest = rr / "checkpoints" / "step-000004" / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    resumed = resume_run(rr, ["train.max_steps=5"])
    lines = _lines_of(resumed)
    assert resumed.run()["status"] == "completed", resumed.summary.get("error")
    assert any(line.startswith("skipped checkpoint step-000004: no manifest, and optimizer.safetensors does not load") for line in lines)
    assert "checkpoint step-000002: no manifest (written before checkpoints had one); its files load; resuming from it" in lines
    assert (rr / "checkpoints" / "step-000005" / "manifest.json").exists()


def test_resume_refuses_overrides_that_make_it_another_run(tmp_path):
    from engine.run import resume_run

    rr = tmp_path / "rr"
    assert Run(load_preset("tiny-sft", _quick(tmp_path, 2, model__adapter="lora")), out_dir=rr).run()["status"] == "completed"
    summary = (rr / "summary.json").read_bytes()
    out = cli("resume", str(rr), "--set", "algorithm=dpo", "--set", "model.lora_rank=4", "--set", "train.max_steps=9", timeout=120)
    assert out.returncode == 2, out.stderr
    lines = _stderr_lines(out)
    assert len(lines) == 1 and "algorithm: sft -> dpo; model.lora_rank: 8 -> 4" in lines[0], out.stderr
    assert "max_steps" not in lines[0]  # what a resume may change is not listed
    assert (rr / "summary.json").read_bytes() == summary
    # the optimizer state's layout and the weights' dtype: the saved state is restored as it is
    with pytest.raises(RunDirError, match=r"model.dtype: auto -> bfloat16; train.optimizer_state: float32 -> model"):
        resume_run(rr, ["model.dtype=bfloat16", "train.optimizer_state=model"])

    # a config.toml that no longer matches its checkpoints (an old clobbered folder) is caught too
    text = (rr / "config.toml").read_text()
    assert "lora_rank = 8" in text
    (rr / "config.toml").write_text(text.replace("lora_rank = 8", "lora_rank = 4"))
    run = resume_run(rr, ["train.max_steps=3"])
    assert run.run()["status"] == "failed"
    assert "other adapters than the config asks for (model.lora_rank: 8 -> 4)" in run.summary["error"]


def test_a_run_killed_before_its_first_checkpoint_is_named_and_not_offered_for_resume(tmp_path):
    rr = tmp_path / "rr"
    rr.mkdir()
    (rr / "config.toml").write_text('algorithm = "dpo"\n[train]\nmax_steps = 50\n')
    (rr / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n{"step": 2, "loss": 0.68}\n{"step": 3, "lo')
    run = Run(load_preset("tiny-sft", _quick(tmp_path, 1)), out_dir=rr)
    assert run.run()["status"] == "failed"
    assert run.summary["error"] == (
        f"{rr}: already holds a run (dpo, 2/50 steps, stopped without a summary) with no checkpoint to continue from; "
        "replace it with --overwrite (overwrite=True in Python) or choose another --out"
    )
    assert sorted(p.name for p in rr.iterdir()) == ["config.toml", "metrics.jsonl", "run.lock"]


def test_clearing_a_run_removes_its_files_and_keeps_the_users(tmp_path):
    from engine.rundir import RunDirectory

    d = tmp_path / "rr"
    (d / "checkpoints" / "step-000002").mkdir(parents=True)
    for name in ("config.toml", "metrics.jsonl", "events.log", "summary.json", "adapters.safetensors", ".summary.json.tmp-99"):
        (d / name).write_text("x")
    (d / "README.md").write_text("# my notes about this experiment\n")
    (d / "train_labels.jsonl").write_text("{}\n")
    removed = RunDirectory(d).clear_run()
    assert sorted(removed) == ["adapters.safetensors", "checkpoints", "config.toml", "events.log", "metrics.jsonl", "summary.json"]
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "train_labels.jsonl"]
    (d / "README.md").write_text('---\nlibrary_name: mlx\ntags:\n- "mlx"\n- "rlhf-tui"\n---\n\n# rr\n')  # a model card
    assert RunDirectory(d).clear_run() == ["README.md"]
