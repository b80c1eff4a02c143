"""The presets screen: built-in and user presets, a resolved preview, start/edit/duplicate/delete."""

from __future__ import annotations

from pathlib import Path

import tomli_w
from rich.syntax import Syntax
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from engine.config import RunConfig, resolved, to_dict
from engine.errors import ConfigError
from engine.presets import PresetInfo, list_presets, load_preset, save_user_preset, user_dir
from rlhf_tui.screens.dialogs import ConfirmScreen, PromptScreen

HELP = """\
Pick a training recipe. **Built-in** presets ship with rlhf-tui; **user** presets are the ones
you saved from the editor (stored in your config folder, shown at the bottom of the preview).

The right side shows the fully resolved config the run will use (paths made absolute,
command-line `--set` overrides applied to the preset you launched with).

Start a preset with **enter** or **s**: the run monitor opens and training runs in the
background of this app. **e** opens the editor (a form over every config key), **d** saves a
copy as a user preset, **delete** removes a user preset (built-ins cannot be deleted).
**f** follows a run directory that another process (`rlhf-tui run ...`) is writing.
"""


class PresetsScreen(Screen):
    HELP_TITLE = "Presets"
    HELP = HELP
    BINDINGS = [
        Binding("s", "start", "Start", id="presets.start", tooltip="Start training the selected preset"),
        Binding("e", "edit", "Edit", id="presets.edit", tooltip="Edit the selected preset's settings"),
        Binding("d", "duplicate", "Duplicate", id="presets.duplicate", tooltip="Save a copy as a user preset"),
        Binding("delete", "delete", "Delete", id="presets.delete", tooltip="Delete the selected user preset"),
        Binding("f", "follow", "Follow run dir", id="presets.follow", tooltip="Monitor a run another process writes"),
        Binding("l", "label", "Label", id="presets.label", tooltip="Label this preset's model's completions (human feedback)"),
        Binding("i", "app.inspect", "Pairs", id="presets.inspect", tooltip="Inspect and score this preset's preference pairs"),
        Binding("h", "app.history", "History", id="presets.history", tooltip="Every run: reopen, overlay, compare, resume, export"),
        Binding("f5", "refresh", "Refresh", id="presets.refresh", show=False),
    ]

    def __init__(self, selected: str, overrides: list[str] | None = None) -> None:
        super().__init__()
        self.initial = selected
        self.overrides = list(overrides or [])
        self.presets: list[PresetInfo] = []
        self.current: PresetInfo | None = None
        self.current_config: RunConfig | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="presets-body"):
            with Vertical(id="presets-left"):
                table: DataTable = DataTable(id="presets-table", cursor_type="row", zebra_stripes=True)
                table.border_title = "Presets"
                yield table
                yield Static(id="preset-description")
            with VerticalScroll(id="preset-preview"):
                yield Static(id="preview-body")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "rlhf-tui"
        self.sub_title = "presets"
        table = self.query_one(DataTable)
        table.add_columns("Name", "Kind", "Algorithm", "Model", "Description")
        self.reload(select=self.initial)
        table.focus()

    # ------------------------------------------------------------------ listing

    def reload(self, select: str | None = None) -> None:
        table = self.query_one(DataTable)
        keep = select or (self.current.name if self.current else self.initial)
        self.presets = list_presets()
        # a preset given as a path that is not in the folders still gets a row
        if keep and keep.endswith(".toml") and not any(str(p.path) == keep for p in self.presets):
            path = Path(keep)
            try:
                cfg = load_preset(keep)
                self.presets.append(PresetInfo(path.stem, path, False, cfg.algorithm, cfg.model.path, cfg.description))
            except ConfigError as err:
                self.presets.append(PresetInfo(path.stem, path, False, "?", "?", "", error=str(err)))
        table.clear()
        row = 0
        for i, info in enumerate(self.presets):
            kind = "built-in" if info.builtin else ("file" if info.path.parent != user_dir() else "user")
            name = Text(info.name, style="bold red" if info.error else "bold")
            algo = Text(info.algorithm.upper() if not info.error else "broken", style="red" if info.error else "cyan")
            desc = info.description if len(info.description) <= 48 else info.description[:47] + "…"
            table.add_row(name, Text(kind, style="dim" if info.builtin else "green"), algo, Text(info.model, style="dim"), Text(desc, style="dim italic"), key=str(i))
            if keep and (info.name == keep or str(info.path) == keep):
                row = i
        if self.presets:
            table.move_cursor(row=row)
            table.call_after_refresh(table.move_cursor, row=row)  # scrolled into view once laid out
            self.show(self.presets[row])

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self.show(self.presets[int(event.row_key.value)])

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_start()

    def _overrides_for(self, info: PresetInfo) -> list[str]:
        """Command-line --set overrides apply to the preset the app was launched with."""
        launched = info.name == self.initial or str(info.path) == self.initial
        return self.overrides if launched else []

    def config_for(self, info: PresetInfo) -> RunConfig:
        return load_preset(str(info.path), self._overrides_for(info))

    def show(self, info: PresetInfo) -> None:
        self.current = info
        desc = self.query_one("#preset-description", Static)
        body = self.query_one("#preview-body", Static)
        preview = self.query_one("#preset-preview")
        preview.border_title = f"{info.name} — resolved config"
        preview.border_subtitle = str(info.path)
        try:
            cfg = self.config_for(info)
        except ConfigError as err:
            self.current_config = None
            desc.update(Text.assemble(("This preset cannot be loaded\n", "bold red"), (str(err), "red")))
            body.update(Text(f"{err}\n\nFix the file, then press F5.", style="red"))
            return
        self.current_config = cfg
        used = self._overrides_for(info)
        text = Text()
        text.append(info.description or cfg.description or "(no description)", style="")
        text.append("\n")
        text.append(f"{cfg.algorithm.upper()}", style="bold cyan")
        text.append(f" · {cfg.train.max_steps} steps · batch {cfg.train.batch_size} · lr {cfg.train.learning_rate:g} · {cfg.model.adapter}", style="dim")
        if used:
            text.append("\n--set " + " ".join(used), style="yellow")
        desc.update(text)
        data = to_dict(resolved(cfg))
        body.update(Syntax(tomli_w.dumps(data), "toml", theme="ansi_dark", background_color="default", word_wrap=True))

    # ------------------------------------------------------------------ actions

    def _need_config(self) -> RunConfig | None:
        if self.current_config is None:
            self.notify("This preset has an error; fix its file first.", severity="error")
        return self.current_config

    def action_start(self) -> None:
        cfg = self._need_config()
        if cfg is not None:
            self.app.start_run(cfg)  # type: ignore[attr-defined]

    def action_edit(self) -> None:
        cfg = self._need_config()
        if cfg is None or self.current is None:
            return
        from rlhf_tui.screens.editor import EditorScreen

        self.app.push_screen(EditorScreen(cfg, base_name=self.current.name))

    def action_duplicate(self) -> None:
        cfg = self._need_config()
        if cfg is None or self.current is None:
            return
        base = self.current.name

        def done(name: str | None) -> None:
            if not name:
                return
            try:
                path = save_user_preset(cfg, name)
            except Exception as err:  # noqa: BLE001 - disk errors are shown, not raised
                self.notify(str(err), title="Could not save", severity="error")
                return
            self.notify(f"Saved {path}", title=f"Duplicated {base}")
            self.reload(select=path.stem)

        self.app.push_screen(PromptScreen(f"Save a copy of '{base}' as user preset:", value=f"{base}-copy"), done)

    def action_delete(self) -> None:
        info = self.current
        if info is None:
            return
        if info.builtin:
            self.notify("Built-in presets cannot be deleted (duplicate one to make your own).", severity="warning")
            return

        def done(yes: bool | None) -> None:
            if yes:
                try:
                    info.path.unlink()
                except OSError as err:
                    self.notify(f"{info.path}: {err.strerror or err}", title="Could not delete", severity="error")
                    return
                self.notify(f"Deleted {info.path}")
                self.current = None
                self.reload(select=self.initial)

        self.app.push_screen(ConfirmScreen(f"Delete user preset '{info.name}'?", str(info.path), yes="Delete", no="Keep"), done)

    def action_follow(self) -> None:
        def done(path: str | None) -> None:
            if path:
                self.app.follow_run_dir(path)  # type: ignore[attr-defined]

        self.app.push_screen(PromptScreen("Follow a run directory (being written by another process):", placeholder="runs/tiny-dpo-20260101-120000"), done)

    def action_label(self) -> None:
        self.app.show_labelling(self.current_config)  # type: ignore[attr-defined]

    def action_refresh(self) -> None:
        self.reload()
