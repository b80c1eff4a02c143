"""The presets screen without training: duplicate, delete (user presets only), broken files."""

from __future__ import annotations

import asyncio
import tomllib

import pytest

from engine.presets import user_dir
from rlhf_tui.app import make_app
from rlhf_tui.screens.presets import PresetsScreen


def test_duplicate_then_delete_a_user_preset_but_never_a_builtin():
    async def scenario() -> None:
        app = make_app("tiny-sft", overrides=["train.max_steps=7"])
        async with app.run_test(size=(140, 42)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, PresetsScreen) and screen.current.name == "tiny-sft"
            # the --set override shows in the preview and is kept by a duplicate
            assert screen.current_config.train.max_steps == 7
            await pilot.press("d")
            await pilot.pause()
            prompt = app.screen.query_one("#answer")
            assert prompt.value == "tiny-sft-copy"
            prompt.value = "my-sft"
            await pilot.press("enter")
            await pilot.pause()
            path = user_dir() / "my-sft.toml"
            saved = tomllib.loads(path.read_text())
            assert saved["algorithm"] == "sft" and saved["train"]["max_steps"] == 7
            assert screen.current.name == "my-sft" and not screen.current.builtin

            # delete asks first; "n" keeps it, "y" removes it
            await pilot.press("delete")
            await pilot.pause()
            await pilot.press("n")
            await pilot.pause()
            assert path.exists()
            await pilot.press("delete")
            await pilot.pause()
            await pilot.press("y")
            await pilot.pause()
            assert not path.exists()
            assert "my-sft" not in [p.name for p in screen.presets]

            # a built-in cannot be deleted: no dialog, the file stays
            screen.reload(select="tiny-dpo")
            await pilot.pause()
            await pilot.press("delete")
            await pilot.pause()
            assert app.screen is screen and screen.current.path.exists()

    asyncio.run(scenario())


def test_a_broken_user_preset_is_listed_with_its_error():
    folder = user_dir()
    folder.mkdir(parents=True, exist_ok=True)
    bad = folder / "broken-one.toml"
    bad.write_text('algorithm = "dpo"\n[train]\nmax_steps = "many"\n')

    async def scenario() -> None:
        app = make_app("broken-one")
        async with app.run_test(size=(140, 42)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert screen.current.name == "broken-one" and screen.current_config is None
            text = str(screen.query_one("#preview-body").render())
            assert "train.max_steps" in text and "many" in text
            await pilot.press("s")  # refused with a message, nothing starts
            await pilot.pause()
            assert app.active_run is None

    try:
        asyncio.run(scenario())
    finally:
        bad.unlink()


async def open_editor(pilot):  # noqa: ANN001, ANN201
    """From the presets screen, ``e``: the editor for the selected preset."""
    from rlhf_tui.screens.editor import EditorScreen

    await pilot.pause()
    await pilot.press("e")
    await pilot.pause()
    assert isinstance(pilot.app.screen, EditorScreen)
    return pilot.app.screen


def test_f1_opens_help_while_typing_in_an_editor_field():
    """'?' is a character in a text field; F1 still opens the help there."""
    from textual.widgets import Input

    from rlhf_tui.screens.dialogs import HelpScreen

    async def scenario() -> None:
        app = make_app("tiny-dpo")
        async with app.run_test(size=(140, 42)) as pilot:
            editor = await open_editor(pilot)
            field = next(w for w in editor.query(Input) if w.id and "max_steps" in w.id)
            field.focus()
            await pilot.pause()
            await pilot.press("?")
            await pilot.pause()
            assert app.screen is editor and field.value.endswith("?")  # typed, not help
            await pilot.press("f1")
            await pilot.pause(0.3)
            assert isinstance(app.screen, HelpScreen)
            assert "f1 also works while typing" in app.screen.help_text
            await pilot.press("f1")  # and closes it again
            await pilot.pause(0.3)
            assert app.screen is editor

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_run_started_right_after_saving_carries_the_saved_name(tmp_path):
    from textual.widgets import Input

    from rlhf_tui.screens.monitor import MonitorScreen

    async def scenario() -> None:
        app = make_app("tiny-dpo", overrides=["train.max_steps=3", "train.eval_every=0", "train.save_every=0"], runs_root=str(tmp_path))
        async with app.run_test(size=(140, 42)) as pilot:
            editor = await open_editor(pilot)
            editor.query_one("#editor-name", Input).value = "my-sorter"
            await pilot.press("ctrl+s")
            await pilot.pause()
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert isinstance(app.screen, MonitorScreen)
            run = app.active_run
            for _ in range(600):
                if run.status in ("completed", "failed", "cancelled"):
                    break
                await pilot.pause(0.1)
            assert run.status == "completed"
            assert run.directory.path.name.startswith("my-sorter-")

    asyncio.run(scenario())
