"""SVG snapshots of every screen, made deterministic: fixed preset folders, scripted runs.

Update after an intended UI change with ``uv run pytest tests/test_app_snapshots.py --snapshot-update``
and look at the report before committing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import engine.presets
from engine.presets import load_preset
from rlhf_tui.app import make_app
from rlhf_tui.screens.editor import EditorScreen
from rlhf_tui.screens.monitor import MonitorScreen, cancel_dialog
from tests.test_app_support import ROOT, scripted_events

SIZE = (140, 42)
FIXED = Path("/tmp/rlhf-tui-snapshots")  # fixed so resolved paths in previews never change


@pytest.fixture
def fixed_presets(monkeypatch):
    """Two built-in presets and one user preset in fixed folders (other presets come and go)."""
    builtin = FIXED / "presets"
    shutil.rmtree(FIXED, ignore_errors=True)
    (builtin / "data").mkdir(parents=True)
    for name in ("tiny-dpo.toml", "tiny-sft.toml", "qwen2.5-0.5b-dpo.toml"):
        shutil.copy(ROOT / "presets" / name, builtin / name)
    for name in ("sort_train.jsonl", "sort_eval.jsonl"):
        (builtin / "data" / name).write_text("")
    user = FIXED / "config"
    (user / "presets").mkdir(parents=True)
    (user / "presets" / "my-dpo.toml").write_text('name = "my-dpo"\ndescription = "My DPO settings."\nalgorithm = "dpo"\n[model]\npath = "builtin:tiny-sorter"\n[train]\nmax_steps = 50\n')
    monkeypatch.setattr(engine.presets, "builtin_dir", lambda: builtin)
    monkeypatch.setenv("RLHF_TUI_CONFIG", str(user))
    yield builtin


def monitor_app(events):
    screen = MonitorScreen(title="tiny-dpo · DPO")
    app = make_app(initial_screen=screen)

    async def feed(pilot):
        await pilot.pause()
        screen.apply_events(events)
        screen.redraw(force=True)
        await pilot.pause(0.2)
        screen.redraw(force=True)
        await pilot.pause(0.1)

    return app, screen, feed


def test_presets_screen(snap_compare, fixed_presets):
    app = make_app("tiny-dpo", overrides=["train.max_steps=50"])
    assert snap_compare(app, terminal_size=SIZE)


def test_presets_screen_user_preset_selected(snap_compare, fixed_presets):
    assert snap_compare(make_app("my-dpo"), terminal_size=SIZE)


def test_editor_with_an_invalid_and_a_changed_value(snap_compare, fixed_presets):
    cfg = load_preset("tiny-dpo")
    screen = EditorScreen(cfg, "tiny-dpo")

    async def edit(pilot):
        await pilot.pause()
        # sections mount one per frame: wait for the last one before editing and snapping
        while not (screen.query("#row-f--dpo--beta") and screen.query("#section-grpo")):
            await pilot.pause(0.05)
        screen.set_text("train.learning_rate", "1e-3")
        screen.set_text("train.max_steps", "0")
        screen.set_focus(None)  # no blinking cursor: the picture must not depend on timing
        await pilot.pause(0.3)
        await pilot.pause()

    assert snap_compare(make_app(initial_screen=screen), terminal_size=SIZE, run_before=edit)


def test_monitor_waiting_for_first_step(snap_compare):
    app, _, feed = monitor_app(scripted_events(0)[:1])
    assert snap_compare(app, terminal_size=SIZE, run_before=feed)


def test_monitor_mid_run(snap_compare):
    app, _, feed = monitor_app(scripted_events(120))
    assert snap_compare(app, terminal_size=SIZE, run_before=feed)


def test_monitor_mid_run_log_y_wall_time(snap_compare):
    app, _, feed = monitor_app(scripted_events(120))

    async def toggled(pilot):
        await feed(pilot)
        await pilot.press("l", "x")
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=SIZE, run_before=toggled)


def test_monitor_completed(snap_compare):
    app, _, feed = monitor_app(scripted_events(200, finish="completed"))
    assert snap_compare(app, terminal_size=SIZE, run_before=feed)


def test_monitor_failed(snap_compare):
    app, _, feed = monitor_app(scripted_events(60, finish="failed"))
    assert snap_compare(app, terminal_size=SIZE, run_before=feed)


def test_monitor_cancel_confirmation(snap_compare):
    app, _, feed = monitor_app(scripted_events(40))

    async def ask(pilot):
        await feed(pilot)
        app.push_screen(cancel_dialog(40))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=ask)


def test_monitor_help(snap_compare):
    app, _, feed = monitor_app(scripted_events(40))

    async def helped(pilot):
        await feed(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=helped)


def test_small_terminal_monitor(snap_compare):
    app, _, feed = monitor_app(scripted_events(80))
    assert snap_compare(app, terminal_size=(80, 24), run_before=feed)
