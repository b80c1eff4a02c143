"""A user keymap: binding id -> keys, read at start-up from ``keymap.toml``.

Every binding of the console has an id (``monitor.log_y``, ``presets.start``, ``app.help``,
...; ``rlhf-tui keys`` is not needed: the help screen of each screen lists them). A file
``keymap.toml`` in the config folder (``RLHF_TUI_CONFIG``, else the platform's config folder
for rlhf-tui) remaps them::

    [keymap]
    "presets.start" = "enter"
    "monitor.log_y" = "ctrl+l"
    "app.help" = "f2,question_mark"

An unknown id or a value that is not a string is one error naming the file and the id.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import tomllib
from pathlib import Path

from engine.errors import ConfigError

FILE_NAME = "keymap.toml"


def keymap_path() -> Path:
    env = os.environ.get("RLHF_TUI_CONFIG")
    if env:
        return Path(env) / FILE_NAME
    from platformdirs import user_config_dir

    return Path(user_config_dir("rlhf-tui")) / FILE_NAME


def binding_ids() -> set[str]:
    """The ids of every binding the console declares (app, screens, widgets)."""
    from textual.binding import Binding

    import rlhf_tui.screens
    import rlhf_tui.widgets

    modules = [importlib.import_module("rlhf_tui.app")]
    for pkg in (rlhf_tui.screens, rlhf_tui.widgets):
        modules += [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    ids: set[str] = set()
    for module in modules:
        for obj in vars(module).values():
            for b in getattr(obj, "BINDINGS", None) or [] if isinstance(obj, type) else []:
                if isinstance(b, Binding) and b.id:
                    ids.add(b.id)
    return ids


def load_keymap(path: Path | None = None) -> dict[str, str]:
    """The user's keymap (empty when there is no file)."""
    path = keymap_path() if path is None else path
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    table = data.get("keymap", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [keymap] must be a table of binding id = \"keys\"")
    known = binding_ids()
    out: dict[str, str] = {}
    for key, value in table.items():
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{path}: '{key}' is not a binding id{hint}; each screen's help (?) lists its keys")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: '{key}' must be a string of keys like \"ctrl+l\" or \"f2,question_mark\", found {value!r}")
        out[key] = value.strip()
    return out
