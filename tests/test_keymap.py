"""A user keymap (keymap.toml in the config folder) remaps bindings by id at start-up."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from rlhf_tui.app import make_app
from rlhf_tui.keymap import binding_ids, load_keymap
from rlhf_tui.screens.dialogs import HelpScreen
from tests.helpers import cli, run_pilot


def test_every_screen_binding_id_is_known():
    ids = binding_ids()
    assert {"app.help", "app.quit", "presets.start", "inspector.model_view"} <= ids


def test_a_remapped_key_opens_help(tmp_path):
    (tmp_path / "keymap.toml").write_text('[keymap]\n"app.help" = "f2"\n')
    app = make_app(keymap=load_keymap(tmp_path / "keymap.toml"))
    seen = {}

    async def script(pilot):
        await pilot.pause()
        await pilot.press("f2")
        await pilot.pause()
        seen["help"] = isinstance(pilot.app.screen, HelpScreen)

    run_pilot(app, script)
    assert seen["help"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[keymap]\n"app.halp" = "f2"\n', "'app.halp' is not a binding id (did you mean 'app.help'?)"),
        ('[keymap]\n"app.help" = 3\n', "'app.help' must be a string of keys"),
        ("[keymap\n", "not valid TOML"),
    ],
)
def test_a_bad_keymap_is_one_line_naming_the_file(tmp_path, text, fragment):
    path = tmp_path / "keymap.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_keymap(path)
    assert str(err.value).startswith(str(path)) and fragment in str(err.value)
    out = cli("tiny-dpo", env={"RLHF_TUI_CONFIG": str(tmp_path)})
    assert out.returncode == 2 and fragment in out.stderr and out.stderr.count("\n") == 1
