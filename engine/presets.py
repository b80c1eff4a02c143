"""Built-in and user presets: TOML files found by name or path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig, load_config_file, load_toml
from engine.errors import ConfigError

DEFAULT_PRESET = "tiny-dpo"


def builtin_dir() -> Path:
    """``presets/`` in a checkout, or the copy packaged inside the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "presets", here / "_presets"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("the built-in presets folder is missing from this installation")


def user_dir() -> Path:
    import os

    env = os.environ.get("RLHF_TUI_CONFIG")
    if env:
        return Path(env) / "presets"
    from platformdirs import user_config_dir

    return Path(user_config_dir("rlhf-tui")) / "presets"


@dataclass(frozen=True)
class PresetInfo:
    name: str
    path: Path
    builtin: bool
    algorithm: str
    model: str
    description: str
    error: str = ""


def _info(path: Path, builtin: bool) -> PresetInfo:
    try:
        data = load_toml(path)
        model = data.get("model", {}).get("path", "builtin:tiny-sorter") if isinstance(data.get("model"), dict) else "?"
        return PresetInfo(path.stem, path, builtin, str(data.get("algorithm", "dpo")), str(model), str(data.get("description", "")))
    except ConfigError as err:
        return PresetInfo(path.stem, path, builtin, "?", "?", "", error=str(err))


def list_presets() -> list[PresetInfo]:
    """Built-in presets first, then user presets, each sorted by name."""
    out = [_info(p, True) for p in sorted(builtin_dir().glob("*.toml"))]
    udir = user_dir()
    if udir.is_dir():
        out += [_info(p, False) for p in sorted(udir.glob("*.toml"))]
    return out


def find_preset(name_or_path: str) -> Path:
    """The TOML file of a preset: a path, else a user preset, else a built-in one (ConfigError if none)."""
    p = Path(name_or_path).expanduser()
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise ConfigError(f"{p}: preset file not found")
        if p.is_dir():
            raise ConfigError(f"{p}: is a folder, expected a preset .toml file")
        return p
    for folder in (user_dir(), builtin_dir()):
        candidate = folder / f"{name_or_path}.toml"
        if candidate.exists():
            return candidate
    names = sorted({i.name for i in list_presets()})
    import difflib

    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown preset '{name_or_path}'{hint}; available: {', '.join(names)}")


def load_preset(name_or_path: str = DEFAULT_PRESET, overrides: list[str] | None = None) -> RunConfig:
    """A preset by built-in/user name or path, with ``key=value`` overrides applied."""
    path = find_preset(name_or_path)
    cfg = load_config_file(path, overrides)
    if not cfg.name or cfg.name == "run":
        cfg.name = path.stem
    return cfg


def save_user_preset(cfg: RunConfig, name: str) -> Path:
    """Write ``cfg`` as a user preset with tomli-w (paths made absolute so it works from anywhere)."""
    import tomli_w

    from engine.config import resolved, to_dict
    from engine.rundir import atomic_write_text, safe_name

    clean = safe_name(name)
    folder = user_dir()
    folder.mkdir(parents=True, exist_ok=True)
    data = to_dict(resolved(cfg))
    data["name"] = clean
    path = folder / f"{clean}.toml"
    atomic_write_text(path, tomli_w.dumps(data))
    return path
