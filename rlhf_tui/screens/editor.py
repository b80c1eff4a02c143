"""The preset editor: a form generated from ``engine.config.schema()``.

Every key gets a widget chosen by its type (Select for choices, Switch for booleans, Input
for numbers and strings), its help line, and inline validation through
``engine.config.parse_text_value`` — the same messages the CLI's ``--set`` prints. The side
panel shows the diff against the preset the editor was opened on; ctrl+s saves the result as
a user preset (tomli-w, in the platform's config folder).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.lazy import Reveal
from textual.screen import Screen
from textual.widgets import Collapsible, Footer, Header, Input, Label, Select, Static, Switch

from engine.algorithms.registry import REGISTRY, sections_for
from engine.config import FieldSpec, RunConfig, diff, get_value, parse_text_value, schema, set_value
from engine.errors import ConfigError
from engine.presets import list_presets, save_user_preset
from rlhf_tui.screens.dialogs import ConfirmScreen

SECTION_TITLES = {
    "": "Run",
    "model": "Model",
    "data": "Data",
    "train": "Training",
    "generation": "Generation (rollouts)",
    **{a.section: a.title for a in REGISTRY},
}
ALWAYS_OPEN = ("", "data", "train")  # open at start (with the algorithm's own); others build on opening

HELP = """\
Every setting of the preset, generated from the engine's config schema. Type a value and it
is checked at once (the message is the one `rlhf-tui run --set key=value` would print).
Changed keys turn yellow and are listed on the right against the preset you started from.

**ctrl+f** (or the box at the top) filters the keys by a word; enter jumps to the first match.
**ctrl+s** saves the settings as a user preset under the name at the top right (your config
folder; the presets screen lists it). **ctrl+r** starts a run with these settings without
saving. **escape** goes back (asks first when there are unsaved changes). Sections for other
algorithms start folded; changing the algorithm opens its section.
"""


def widget_id(key: str) -> str:
    return "f--" + key.replace(".", "--")


def key_of(widget_id_: str | None) -> str:
    return (widget_id_ or "").removeprefix("f--").replace("--", ".")


def text_of(value: Any) -> str:
    if isinstance(value, tuple):  # a list of choices (report.to): "tensorboard, wandb"
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value) if abs(value) >= 1e-4 or value == 0 else f"{value:g}"
    return str(value)


class FieldRow(Container):
    """One key: its name and help (or its error) on the left, its input on the right."""

    def __init__(self, spec: FieldSpec, value: Any) -> None:
        super().__init__(classes="field", id="row-" + widget_id(spec.key))
        self.spec = spec
        self.value = value
        self.error = ""

    def info_text(self) -> Text:
        spec = self.spec
        t = Text(spec.key.rsplit(".", 1)[-1], style="bold")
        if self.error:
            t.append(f"\n✗ {self.error}", style="bold red")
        else:
            t.append(f"\n{spec.help}  [{spec.describe_allowed()}]", style="dim")
        return t

    def set_error(self, error: str) -> None:
        if error != self.error:
            self.error = error
            self.set_class(bool(error), "-invalid")
            self.query_one(".info", Static).update(self.info_text())

    def compose(self) -> ComposeResult:
        spec = self.spec
        yield Static(self.info_text(), classes="info")
        wid = widget_id(spec.key)
        if spec.choices and spec.type is not tuple:
            yield Select([(str(c), c) for c in spec.choices], value=self.value, allow_blank=False, id=wid, compact=True)
        elif spec.type is bool:
            yield Switch(value=bool(self.value), id=wid)
        else:
            yield Input(text_of(self.value), placeholder=spec.describe_allowed(), id=wid, compact=True)


class SchemaSection(Collapsible):
    """One config section; its rows are built the first time it opens (a faster editor)."""

    def __init__(self, name: str, specs: list[FieldSpec], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.section = name
        self.specs = specs
        self.populated = not kwargs.get("collapsed", True)

    def populate(self) -> None:
        if self.populated:
            return
        self.populated = True
        screen = self.screen
        cfg = getattr(screen, "cfg", None)
        rows = [FieldRow(spec, get_value(cfg, spec.key)) for spec in self.specs]
        self.query_one(Collapsible.Contents).mount_all(rows)
        if isinstance(screen, EditorScreen):
            for row in rows:
                key = row.spec.key
                row.set_class(get_value(screen.base, key) != get_value(cfg, key), "changed")

    def _watch_collapsed(self, collapsed: bool) -> None:
        if not collapsed and self.is_mounted:
            self.populate()
        super()._watch_collapsed(collapsed)


class EditorScreen(Screen):
    HELP_TITLE = "Preset editor"
    HELP = HELP
    BINDINGS = [
        Binding("ctrl+s", "save", "Save preset", id="editor.save", tooltip="Save as a user preset"),
        Binding("ctrl+r", "start", "Start run", id="editor.start", tooltip="Start a run with these settings"),
        Binding("escape", "back", "Back", id="editor.back", tooltip="Back to the presets"),
        Binding("ctrl+f", "filter", "Filter keys", id="editor.filter", tooltip="Show only keys matching a word"),
    ]
    AUTO_FOCUS = "#editor-filter"  # type a word, enter jumps to the first matching key

    def __init__(self, cfg: RunConfig, base_name: str) -> None:
        super().__init__()
        self.base = copy.deepcopy(cfg)
        self.cfg = copy.deepcopy(cfg)
        self.base_name = base_name
        self.invalid: dict[str, str] = {}
        self.saved_path: str = ""
        self._saved_cfg: RunConfig | None = None
        self.specs = {s.key: s for s in schema()}

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="editor-body"):
            with Vertical(id="editor-left"):
                yield Input(placeholder="filter keys (ctrl+f): e.g. learning, beta, lora — enter jumps to the first", id="editor-filter")
                yield from self._form()
            with Vertical(id="editor-side"):
                with Horizontal(id="editor-name-row"):
                    yield Label("Save as")
                    yield Input(self._default_name(), id="editor-name")
                yield Static(id="editor-diff")
                yield Static(id="editor-status")
        yield Footer()

    def _form(self) -> ComposeResult:
        # sections are mounted one per frame after the screen shows (it opens at once)
        with Reveal(VerticalScroll(id="editor-form")):
            for section, specs in self._sections().items():
                relevant = section in ALWAYS_OPEN or section in sections_for(self.cfg.algorithm)
                with SchemaSection(section, specs, title=SECTION_TITLES.get(section, section), collapsed=not relevant, id=f"section-{section or 'run'}", classes="section"):
                    if relevant:  # folded sections build their rows when first opened
                        for spec in specs:
                            yield FieldRow(spec, get_value(self.cfg, spec.key))

    def _sections(self) -> dict[str, list[FieldSpec]]:
        out: dict[str, list[FieldSpec]] = {}
        for spec in self.specs.values():
            section = spec.key.rsplit(".", 1)[0] if "." in spec.key else ""
            out.setdefault(section, []).append(spec)
        return out

    def _default_name(self) -> str:
        builtin = {p.name for p in list_presets() if p.builtin}
        return f"{self.base_name}-custom" if self.base_name in builtin else self.base_name

    def on_mount(self) -> None:
        self.title = "rlhf-tui"
        self.sub_title = f"editing {self.base_name}"
        self.query_one("#editor-diff").border_title = f"Changes vs {self.base_name}"
        self.query_one("#editor-status").border_title = "Status"
        self.refresh_side()

    # ------------------------------------------------------------------ editing

    def _row(self, key: str) -> FieldRow:
        return self.query_one("#row-" + widget_id(key), FieldRow)

    def set_text(self, key: str, text: str) -> str | None:
        """Validate ``text`` for ``key``; store it when valid. Returns the error, if any."""
        spec = self.specs[key]
        row = self._row(key)
        try:
            value = parse_text_value(spec, text)
        except ConfigError as err:
            self.invalid[key] = str(err)
            row.set_error(str(err))
            self.refresh_side()
            return str(err)
        self.invalid.pop(key, None)
        row.set_error("")
        self._store(key, value)
        return None

    def _store(self, key: str, value: Any) -> None:
        set_value(self.cfg, key, value)
        self._row(key).set_class(get_value(self.base, key) != value, "changed")
        if key == "algorithm":
            for section in sections_for(str(value)):
                for found in self.query(f"#section-{section}").results(Collapsible):
                    found.collapsed = False
        self.refresh_side()

    def action_filter(self) -> None:
        self.query_one("#editor-filter", Input).focus()

    def apply_filter(self, text: str) -> int:
        """Show only keys whose name or help contains ``text``; returns how many match."""
        words = text.lower().split()
        shown = 0
        for section in self.query(SchemaSection):
            matches = {spec.key for spec in section.specs if all(w in f"{spec.key} {spec.help}".lower() for w in words)}
            section.display = bool(matches)
            if words and matches:
                section.collapsed = False  # builds its rows if needed
            for row in section.query(FieldRow):
                row.display = row.spec.key in matches
            shown += len(matches)
        if words:  # rows just built by opening a section are filtered once mounted
            self.call_after_refresh(self._filter_rows, set(words))
        return shown

    def _filter_rows(self, words: set[str]) -> None:
        for row in self.query(FieldRow):
            row.display = all(w in f"{row.spec.key} {row.spec.help}".lower() for w in words)

    @on(Input.Submitted, "#editor-filter")
    def _filter_submitted(self) -> None:
        first = next((r for r in self.query(FieldRow) if r.display and r.parent and r.parent.display), None)
        if first is not None:
            first.query_one("Input, Select, Switch").focus()

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "editor-filter":
            self.apply_filter(event.value)
            return
        if event.input.id and event.input.id.startswith("f--"):
            self.set_text(key_of(event.input.id), event.value)
        elif event.input.id == "editor-name":
            self.refresh_side()

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        if event.select.id and event.select.id.startswith("f--") and event.value is not Select.BLANK:
            key = key_of(event.select.id)
            if get_value(self.cfg, key) != event.value:  # (a Select also reports its first value)
                self._store(key, event.value)

    @on(Switch.Changed)
    def _switch_changed(self, event: Switch.Changed) -> None:
        if event.switch.id and event.switch.id.startswith("f--"):
            key = key_of(event.switch.id)
            if get_value(self.cfg, key) != event.value:
                self._store(key, event.value)

    # ------------------------------------------------------------------ side panel

    def changes(self) -> dict[str, tuple[Any, Any]]:
        return diff(self.cfg, self.base)

    def refresh_side(self) -> None:
        changes = self.changes()
        text = Text()
        if not changes:
            text.append("no changes yet — edit a value on the left", style="dim")
        for key, (old, new) in changes.items():
            text.append(f"{key}\n", style="bold")
            text.append(f"  {text_of(old)}", style="red")
            text.append("  →  ")
            text.append(f"{text_of(new)}\n", style="green")
        self.query_one("#editor-diff", Static).update(text)
        status = Text()
        if self.invalid:
            status.append(f"{len(self.invalid)} invalid value(s): fix before saving\n", style="bold red")
            for msg in list(self.invalid.values())[:3]:
                status.append(f"• {msg}\n", style="red")
        else:
            status.append("all values valid\n", style="green")
        name = self.query_one("#editor-name", Input).value.strip() if self.is_mounted else ""
        if self.saved_path:
            status.append(f"saved: {self.saved_path}\n", style="dim")
        status.append("ctrl+s save as '" + (name or "?") + "' · ctrl+r start run", style="dim")
        self.query_one("#editor-status", Static).update(status)

    # ------------------------------------------------------------------ actions

    def _valid_or_warn(self) -> bool:
        if self.invalid:
            key, msg = next(iter(self.invalid.items()))
            self.notify(msg, title=f"{len(self.invalid)} invalid value(s)", severity="error")
            self._row(key).query_one("Input").focus()
            return False
        return True

    def action_save(self) -> None:
        if not self._valid_or_warn():
            return
        name = self.query_one("#editor-name", Input).value.strip()
        if not name:
            self.notify("Type a name for the preset first.", severity="error")
            self.query_one("#editor-name", Input).focus()
            return
        try:
            path = save_user_preset(self.cfg, name)
        except Exception as err:  # noqa: BLE001 - a full disk or bad folder is shown, not raised
            self.notify(str(err), title="Could not save", severity="error")
            return
        self.saved_path = str(path)
        self._saved_cfg = copy.deepcopy(self.cfg)
        builtin = {p.name for p in list_presets() if p.builtin}
        extra = " (it shadows the built-in preset of the same name)" if path.stem in builtin else ""
        self.notify(f"{path}{extra}", title=f"Saved preset '{path.stem}'")
        self.refresh_side()

    def action_start(self) -> None:
        if self._valid_or_warn():
            cfg = copy.deepcopy(self.cfg)
            if self.saved_path and not self._unsaved():  # just saved: the run carries that name
                cfg.name = Path(self.saved_path).stem
            self.app.start_run(cfg)  # type: ignore[attr-defined]

    def _unsaved(self) -> bool:
        reference = self._saved_cfg if self._saved_cfg is not None else self.base
        return bool(diff(self.cfg, reference))

    def action_back(self) -> None:
        def leave(yes: bool | None = True) -> None:
            if yes:
                self.app.show_presets()  # type: ignore[attr-defined]
                if self.saved_path:
                    screen = self.app.screen
                    if hasattr(screen, "reload"):
                        screen.reload(select=self.saved_path.rsplit("/", 1)[-1].removesuffix(".toml"))

        if self._unsaved():
            self.app.push_screen(ConfirmScreen("Discard unsaved changes?", f"{len(self.changes())} changed value(s) will be lost.", yes="Discard", no="Stay"), leave)
        else:
            leave()

    def palette_commands(self) -> list[tuple[str, str, Any]]:
        return [
            ("Editor: save as user preset", "Write the settings with tomli-w", self.action_save),
            ("Editor: start run with these settings", "Train now without saving", self.action_start),
        ]
