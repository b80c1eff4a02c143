"""The real app, driven with Pilot as a user would: edit, save, start, pause, cancel.

One live training run on the tiny built-in model (48 pairs); everything else is scripted
elsewhere. Assertions are on what the user sees, on the messages the app received and on
the engine's own state.
"""

from __future__ import annotations

import asyncio
import tomllib

import pytest

from engine import events as ev
from engine.config import field_spec, parse_text_value
from engine.errors import ConfigError
from engine.presets import user_dir
from rlhf_tui.app import make_app
from rlhf_tui.messages import RunEnded, RunEventsArrived
from rlhf_tui.screens.editor import EditorScreen, widget_id
from rlhf_tui.screens.monitor import MonitorScreen
from rlhf_tui.screens.presets import PresetsScreen
from tests.helpers import wait_until
from tests.test_app_support import small_pairs


async def type_into(pilot, app, key: str, text: str) -> None:
    editor = app.screen
    await wait_until(pilot, lambda: editor.query("#" + widget_id(key)), 60, f"the editor row of {key}")
    inp = editor.query_one("#" + widget_id(key))
    inp.focus()
    inp.value = ""
    await pilot.press(*text)
    await pilot.pause()


@pytest.mark.slow
def test_edit_save_start_pause_cancel(tmp_path):
    pairs = small_pairs(tmp_path / "pairs.jsonl", 48)
    seen: list = []

    def hook(message) -> None:
        if isinstance(message, RunEventsArrived | RunEnded):
            seen.append(message)

    async def scenario() -> None:
        app = make_app("tiny-dpo", runs_root=str(tmp_path / "runs"))
        async with app.run_test(size=(140, 42), message_hook=hook) as pilot:
            await pilot.pause()
            presets = app.screen
            assert isinstance(presets, PresetsScreen) and presets.current.name == "tiny-dpo"

            # -- editor: an invalid value shows the CLI's message; a valid one clears it
            await pilot.press("e")
            await pilot.pause()
            editor = app.screen
            assert isinstance(editor, EditorScreen)
            await type_into(pilot, app, "train.max_steps", "12x")
            try:
                parse_text_value(field_spec("train.max_steps"), "12x")
            except ConfigError as err:
                expected = str(err)
            assert editor.invalid == {"train.max_steps": expected}
            assert expected in str(editor.query_one("#row-" + widget_id("train.max_steps")).query_one(".info").render())
            await pilot.press("ctrl+s")  # refused while a value is invalid
            await pilot.pause()
            assert not (user_dir() / "flow-dpo.toml").exists()
            await type_into(pilot, app, "train.max_steps", "400")
            assert editor.invalid == {}
            await type_into(pilot, app, "data.train", str(pairs))
            await type_into(pilot, app, "data.max_eval_examples", "8")
            await type_into(pilot, app, "train.eval_every", "0")
            assert set(editor.changes()) == {"train.max_steps", "data.train", "data.max_eval_examples", "train.eval_every"}
            name = editor.query_one("#editor-name")
            name.value = "flow-dpo"
            await pilot.press("ctrl+s")
            await pilot.pause()
            saved = tomllib.loads((user_dir() / "flow-dpo.toml").read_text())
            assert saved["train"]["max_steps"] == 400 and saved["data"]["train"] == str(pairs)

            # -- back on the presets screen the new user preset is listed and selected
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, PresetsScreen)
            assert app.screen.current.name == "flow-dpo" and not app.screen.current.builtin

            # -- start it: metrics arrive in the monitor
            await pilot.press("s")
            await pilot.pause()
            monitor = app.screen
            assert isinstance(monitor, MonitorScreen)
            run = app.active_run
            await wait_until(pilot, lambda: monitor.state.step >= 2, what="two training steps")
            assert len(monitor.state.series["loss"]) >= 2

            # -- pause: the engine stops between steps and says so
            await pilot.press("space")
            await wait_until(pilot, lambda: run.status == "paused", 60, "the run to pause")
            await wait_until(pilot, lambda: monitor.state.status == "paused", 10, "the pause to reach the screen")
            paused_at = run.step
            await pilot.pause(0.5)
            assert run.step == paused_at  # no steps while paused
            badge = monitor.query_one("#status-badge")
            assert "PAUSED" in str(badge.render())

            # -- resume: the badge answers the key at once (before any engine event can
            # arrive: nothing is awaited here), then the engine confirms
            monitor.action_toggle_pause()
            assert "RESUMING" in str(badge.render())
            await wait_until(pilot, lambda: run.step > paused_at, 60, "training to go on")
            await wait_until(pilot, lambda: "RUNNING" in str(badge.render()), 10, "the badge to say RUNNING")
            monitor.action_toggle_pause()
            assert "PAUSING" in str(badge.render())
            await wait_until(pilot, lambda: monitor.state.status == "paused", 60, "the second pause")
            paused_at = run.step

            # -- cancel behind the confirm; "keep training" first, then really cancel
            await pilot.press("c")
            await pilot.pause()
            await pilot.press("n")
            await pilot.pause()
            assert run.status == "paused"
            await pilot.press("c")
            await pilot.pause()
            await pilot.press("y")
            await wait_until(pilot, lambda: monitor.state.status == "cancelled", 60, "the cancel")
            assert run.status == "cancelled"
            assert run.step <= paused_at + 1  # took effect within one step
            assert monitor.query_one("#outcome").display
            assert str(run.directory.path) in str(monitor.query_one("#outcome").render())
            await pilot.press("ctrl+q")  # nothing runs any more: quits without asking
            await pilot.pause()

        events = [e for m in seen if isinstance(m, RunEventsArrived) for e in m.events]
        kinds = [type(e).__name__ for e in events]
        assert kinds.index("RunStarted") < kinds.index("StepMetrics") < kinds.index("RunPaused") < kinds.index("RunCancelled")
        assert any(isinstance(m, RunEnded) and m.status == "cancelled" for m in seen)
        # batched: far fewer messages than events
        assert len([m for m in seen if isinstance(m, RunEventsArrived)]) <= len(events)
        assert run.summary["status"] == "cancelled"
        assert run.directory.latest_checkpoint()[0] == run.step
        assert isinstance(events[-1], ev.RunCancelled)

    asyncio.run(scenario())


@pytest.mark.slow
def test_quit_while_training_asks_then_cancels_cleanly(tmp_path):
    pairs = small_pairs(tmp_path / "pairs.jsonl", 48)

    async def scenario() -> int | None:
        app = make_app(
            "tiny-dpo",
            start=True,
            overrides=[f"data.train={pairs}", "train.max_steps=400", "data.max_eval_examples=8", "train.eval_every=0"],
            runs_root=str(tmp_path / "runs"),
        )
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            monitor = app.screen
            assert isinstance(monitor, MonitorScreen)
            await wait_until(pilot, lambda: monitor.state.step >= 1, what="the first step")
            await pilot.press("ctrl+q")
            await pilot.pause()
            assert app.screen.__class__.__name__ == "ConfirmScreen"
            await pilot.press("y")
            await wait_until(pilot, lambda: not app.is_running or app.return_code is not None, 60, "the app to exit")
        return app.return_value, app.active_run

    code, run = asyncio.run(scenario())
    assert code == 130
    assert run.status == "cancelled" and run.summary["status"] == "cancelled"


def test_engine_failure_is_shown_and_the_app_stays_up(tmp_path):
    missing = tmp_path / "no-such-pairs.jsonl"

    async def scenario() -> None:
        app = make_app("tiny-dpo", start=True, overrides=[f"data.train={missing}"], runs_root=str(tmp_path / "runs"))
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            monitor = app.screen
            await wait_until(pilot, lambda: monitor.state.status == "failed", 120, "the run to fail")
            outcome = str(monitor.query_one("#outcome").render())
            assert str(missing) in outcome  # the engine's one-line error, naming the file
            assert app.is_running and app.active_run.status == "failed"
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, PresetsScreen)

    asyncio.run(scenario())
