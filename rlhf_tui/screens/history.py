"""Run history: every run in the runs folder; reopen, overlay, compare configs, resume, export.

:class:`HistoryScreen` lists the runs (status, algorithm, preset, steps, final metrics,
start time, duration). Select several with space and press ``o`` to overlay their curves
(:class:`OverlayScreen`) or ``d`` to see only the hyperparameters that differ
(:class:`ConfigDiffScreen`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from engine.errors import EngineError
from engine.metrics_export import export_beside
from engine.runs_index import RunInfo, config_diff, list_runs
from rlhf_tui.monitoring import DEFAULT_SMOOTHING, SMOOTHING_STEPS, MetricSeries, duration, fmt
from rlhf_tui.widgets.overlay_chart import RUN_COLOURS, OverlayChart, RunSeries, series_of

STATUS_STYLE = {
    "completed": "#5fd7af",
    "cancelled": "#ff875f",
    "failed": "bold #ff5f5f",
    "running": "bold #87d75f",
    "interrupted": "#ffd75f",
}

HELP = """\
Every run in the runs folder, newest first: its **status** (completed, cancelled, failed,
running — still writing — or interrupted — stopped without a summary, e.g. killed), algorithm,
preset, steps done of planned, final loss and reward, the held-out eval headline, when it
started and how long it trained.

**enter** reopens a run's charts in the monitor (a run still being written is followed
live). **space** selects runs; with two or more selected, **o** overlays their loss, KL,
reward, tokens/s and eval curves on the same charts, and **d** shows only the
hyperparameters that differ between them (from each run's `config.toml`).

**r** resumes a cancelled, failed or interrupted run from its last checkpoint, training in
this app. **x** exports the run's metrics to `<run id>-metrics.csv` and `.jsonl` in its folder.
**i** opens the pair inspector on the run's data (score it with the run's checkpoints);
**p** shows its samples (PPO/GRPO). **f** fuses the run's weights into its base: a
standalone mlx-lm model folder (`rlhf-tui fuse`); **c** chats with it beside its base model
(`rlhf-tui chat`). **F5** refreshes the list.
"""


def started_text(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


class HistoryScreen(Screen):
    HELP_TITLE = "Run history"
    HELP = HELP
    DEFAULT_CSS = """
    HistoryScreen #history-summary { height: auto; padding: 0 1; margin-top: 1; }
    HistoryScreen #runs { height: 1fr; border: round $panel-lighten-2; border-title-style: bold; border-subtitle-color: $text-muted; }
    HistoryScreen #runs:focus { border: round $accent; }
    HistoryScreen #run-detail { height: auto; max-height: 12; border: round $panel-lighten-2; border-title-style: bold; padding: 0 1; }
    """
    BINDINGS = [
        Binding("enter", "open", "Open charts", id="history.open", tooltip="Reopen this run's charts in the monitor"),
        Binding("space", "select", "Select", id="history.select", tooltip="Select runs to overlay or compare"),
        Binding("o", "overlay", "Overlay", id="history.overlay", tooltip="Overlay the selected runs' curves"),
        Binding("d", "diff", "Diff config", id="history.diff", tooltip="Only the hyperparameters that differ"),
        Binding("r", "resume", "Resume", id="history.resume", tooltip="Continue a stopped run from its checkpoint"),
        Binding("x", "export", "Export", id="history.export", tooltip="Metrics to CSV and JSONL next to the run"),
        Binding("i", "inspect", "Pairs", id="history.inspect", tooltip="Inspect the run's pairs, scored by its checkpoints"),
        Binding("p", "samples", "Samples", id="history.samples", tooltip="Samples of a PPO/GRPO run"),
        Binding("f", "fuse", "Fuse", id="history.fuse", tooltip="Fuse the run's weights into a standalone mlx-lm model"),
        Binding("c", "chat", "Chat", id="history.chat", tooltip="Chat with the run's model beside its base model"),
        Binding("f5", "refresh", "Refresh", id="history.refresh", show=False),
        Binding("escape", "back", "Back", id="history.back"),
    ]

    def __init__(self, runs_root: str = "runs", now: float | None = None) -> None:
        super().__init__()
        self.runs_root = runs_root
        self.now = now
        self.runs: list[RunInfo] = []
        self.selected: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="history-summary")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static(id="run-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "rlhf-tui"
        self.sub_title = "run history"
        table = self.query_one("#runs", DataTable)
        for label, key in (("", "sel"), ("Run", "run"), ("Status", "status"), ("Algo", "algo"), ("Preset", "preset"),
                           ("Steps", "steps"), ("Loss", "loss"), ("Reward", "reward"), ("Eval", "eval"),
                           ("Started", "started"), ("Time", "time")):
            table.add_column(label, key=key)
        table.border_title = "Runs"
        self.reload()
        table.focus()

    def reload(self) -> None:
        table = self.query_one("#runs", DataTable)
        keep = self.current().id if self.current() else None
        self.runs = list_runs(self.runs_root, self.now)
        ids = {r.id for r in self.runs}
        self.selected &= ids
        table.clear()
        for r in self.runs:
            table.add_row(*self._cells(r), key=r.id)
        table.border_subtitle = str(Path(self.runs_root).expanduser().resolve())
        if keep in ids:
            table.move_cursor(row=table.get_row_index(keep))
        self._summary()
        self._detail()

    def _cells(self, r: RunInfo) -> list[Any]:
        key, value = r.headline_eval()
        eval_text = Text(f"{fmt(value, 3)} {key.removeprefix('eval/')}" if key else "—", style="#5fd7ff" if key else "dim")
        return [
            Text("●", style="bold #ffd75f") if r.id in self.selected else Text("○", style="dim"),
            Text(r.id, style="bold"),
            Text(r.status, style=STATUS_STYLE.get(r.status, "")),
            Text(r.algorithm.upper(), style="cyan"),
            r.preset,
            Text(f"{r.steps}/{r.max_steps}", justify="right"),
            Text(fmt(r.final.get("loss")), justify="right"),
            Text(fmt(r.final.get("reward")), justify="right"),
            eval_text,
            Text(started_text(r.started), style="dim"),
            Text(duration(r.elapsed_s), justify="right"),
        ]

    def _summary(self) -> None:
        t = Text()
        t.append(f"{len(self.runs)} run{'' if len(self.runs) == 1 else 's'}", style="bold")
        t.append(f" in {self.runs_root}", style="dim")
        if self.selected:
            t.append(f" · {len(self.selected)} selected", style="bold #ffd75f")
            t.append(" (o overlays, d compares configs)", style="dim")
        else:
            t.append(" · space selects runs to overlay (o) or compare (d)", style="dim")
        if not self.runs:
            t.append(f"\nNo runs yet: start one from the presets (s), or run `rlhf-tui run tiny-dpo`; runs are written to {self.runs_root}/.", style="yellow")
        self.query_one("#history-summary", Static).update(t)

    def current(self) -> RunInfo | None:
        if not self.is_mounted:
            return None
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001
            return None
        return next((r for r in self.runs if r.id == key), None)

    def _detail(self) -> None:
        panel = self.query_one("#run-detail", Static)
        r = self.current()
        if r is None:
            panel.display = False
            return
        panel.display = True
        panel.border_title = r.id
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        grid.add_row("folder", str(r.path))
        if r.error:
            grid.add_row("error", Text(r.error, style="red"))
        grid.add_row("checkpoints", ", ".join(str(s) for s in r.checkpoints) or "none")
        finals = "  ".join(f"{k} {fmt(v)}" for k, v in r.final.items() if k in ("loss", "kl", "reward", "tokens_per_sec", "grad_norm", "learning_rate"))
        grid.add_row("final", finals or "—")
        if r.final_eval:
            grid.add_row("eval", "  ".join(f"{k.removeprefix('eval/')} {fmt(v)}" for k, v in list(r.final_eval.items())[:6]))
        if r.resumable:
            grid.add_row("", Text(f"r resumes it from step {r.checkpoints[-1]}", style="yellow"))
        panel.update(grid)

    @on(DataTable.RowHighlighted, "#runs")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    @on(DataTable.RowSelected, "#runs")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    # ------------------------------------------------------------------ actions

    def _need(self) -> RunInfo | None:
        r = self.current()
        if r is None:
            self.notify("No run here yet.", severity="warning")
        return r

    def action_open(self) -> None:
        r = self._need()
        if r is not None:
            self.app.follow_run_dir(str(r.path))  # type: ignore[attr-defined]

    def action_select(self) -> None:
        r = self._need()
        if r is None:
            return
        self.selected.symmetric_difference_update({r.id})
        table = self.query_one("#runs", DataTable)
        row = table.cursor_row
        table.update_cell(r.id, "sel", self._cells(r)[0])
        if row + 1 < table.row_count:
            table.move_cursor(row=row + 1)
        self._summary()

    def selected_runs(self) -> list[RunInfo]:
        return [r for r in self.runs if r.id in self.selected]

    def action_overlay(self) -> None:
        runs = self.selected_runs()
        if len(runs) < 2:
            self.notify("Select two or more runs with space first.", severity="warning")
            return
        self.app.push_screen(OverlayScreen([r.path for r in runs]))

    def action_diff(self) -> None:
        runs = self.selected_runs()
        if len(runs) < 2:
            self.notify("Select two or more runs with space first.", severity="warning")
            return
        self.app.push_screen(ConfigDiffScreen([r.path for r in runs]))

    def action_resume(self) -> None:
        r = self._need()
        if r is None:
            return
        if r.status == "running":
            self.notify("This run is still being written; enter follows it.", severity="warning")
            return
        if not r.resumable:
            why = "it completed all its steps" if r.steps >= r.max_steps else "it has no checkpoint"
            self.notify(f"{r.id} cannot be resumed: {why}.", severity="warning")
            return
        self.app.resume_run_dir(str(r.path))  # type: ignore[attr-defined]

    def action_export(self) -> None:
        r = self._need()
        if r is None:
            return
        try:
            paths = [export_beside(r.path, fmt_) for fmt_ in ("csv", "jsonl")]
        except (EngineError, OSError) as err:
            self.notify(str(err), title="Export failed", severity="error")
            return
        self.notify("\n".join(str(p) for p in paths), title="Metrics exported", timeout=10)

    def action_inspect(self) -> None:
        r = self._need()
        if r is not None:
            self.app.show_inspector(run_dir=str(r.path))  # type: ignore[attr-defined]

    def action_samples(self) -> None:
        r = self._need()
        if r is not None:
            self.app.show_samples(run_dir=str(r.path))  # type: ignore[attr-defined]

    def _need_weights(self) -> RunInfo | None:
        """The selected run when it has trained weights (a checkpoint or the root's copy), else a warning."""
        r = self._need()
        if r is not None and not r.checkpoints and not (Path(r.path) / "adapters.safetensors").exists():
            self.notify(f"{r.id} has no trained weights yet (no checkpoint).", severity="warning")
            return None
        return r

    def action_fuse(self) -> None:
        from rlhf_tui.screens.dialogs import PromptScreen
        from rlhf_tui.screens.fuse import FuseScreen, default_fuse_dir

        r = self._need_weights()
        if r is None:
            return

        def chosen(out: str | None) -> None:
            if out:
                self.app.push_screen(FuseScreen(str(r.path), str(Path(out).expanduser())))

        self.app.push_screen(PromptScreen("Fuse into (a new folder):", value=str(default_fuse_dir(r.path))), chosen)

    def action_chat(self) -> None:
        from rlhf_tui.screens.chat import ChatScreen

        r = self._need_weights()
        if r is None:
            return
        self.app.push_screen(ChatScreen(str(r.path)))

    def action_refresh(self) -> None:
        self.reload()

    def action_back(self) -> None:
        self.app.pop_screen()

    def palette_commands(self) -> list[tuple[str, str, Any]]:
        return [
            ("History: overlay selected runs", "Their curves on the same charts", self.action_overlay),
            ("History: diff selected configs", "Only the hyperparameters that differ", self.action_diff),
            ("History: export metrics", "CSV and JSONL next to the run", self.action_export),
            ("History: resume run", "Continue from its last checkpoint", self.action_resume),
            ("History: fuse run", "A standalone mlx-lm model folder", self.action_fuse),
            ("History: chat with run", "Its model beside its base model, same prompts", self.action_chat),
        ]


# ---------------------------------------------------------------- overlay

OVERLAY_PANELS = (("loss", "Loss"), ("kl", "KL"), ("reward", "Reward"), ("tokens_per_sec", "Tokens / s"))


class OverlayScreen(Screen):
    HELP_TITLE = "Overlay"
    HELP = (
        "The curves of the selected runs on the same charts, one colour per run (legend at the top), "
        "EMA-smoothed like the monitor's (**m** cycles the smoothing; 0 shows raw values). Each chart's "
        "subtitle holds every run's last raw value. Eval: the first `eval/` headline the runs share. "
        "Click a chart to zoom (+/-) and pan (arrows)."
    )
    BINDINGS = [
        Binding("m", "cycle_smoothing", "Smoothing", id="overlay.smoothing", tooltip="Cycle the EMA smoothing weight"),
        Binding("escape", "back", "Back", id="overlay.back"),
    ]
    DEFAULT_CSS = """
    OverlayScreen #overlay-legend { height: auto; padding: 0 1; margin-top: 1; }
    OverlayScreen #overlay-charts { grid-size: 3 2; height: 1fr; }
    """

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = [Path(p) for p in run_dirs]
        self.eval_key = ""
        self.smoothing = DEFAULT_SMOOTHING
        self.rows: dict[Path, list[dict[str, Any]]] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="overlay-legend")
        with Grid(id="overlay-charts"):
            for key, title in OVERLAY_PANELS:
                yield OverlayChart(key, title, id=f"overlay-{key}")
            yield OverlayChart("eval", "Eval", id="overlay-eval")
            yield OverlayChart("learning_rate", "Learning rate", id="overlay-learning_rate")
        yield Footer()

    def on_mount(self) -> None:
        from engine.rundir import RunDirectory
        from engine.runs_index import EVAL_HEADLINES

        self.title = "rlhf-tui"
        self.sub_title = f"overlay of {len(self.run_dirs)} runs"
        self.rows = {p: RunDirectory(p).read_metrics() for p in self.run_dirs}
        present = [k for k in EVAL_HEADLINES if any(k in r for p in self.run_dirs for r in self.rows[p])]
        self.eval_key = present[0] if present else ""
        self.draw()

    def colour(self, i: int) -> str:
        return RUN_COLOURS[i % len(RUN_COLOURS)]

    def draw(self) -> None:
        legend = Text()
        for i, p in enumerate(self.run_dirs):
            legend.append("━━ ", style=f"bold {self.colour(i)}")
            legend.append(p.name + "   ")
        legend.append(f"ema {self.smoothing:g}" if self.smoothing else "raw values", style="dim")
        self.query_one("#overlay-legend", Static).update(legend)
        for key, _ in OVERLAY_PANELS:
            self.query_one(f"#overlay-{key}", OverlayChart).draw(self._series(key))
        self.query_one("#overlay-learning_rate", OverlayChart).draw(self._series("learning_rate", smooth=False))
        chart = self.query_one("#overlay-eval", OverlayChart)
        chart.border_title = f"Eval · {self.eval_key.removeprefix('eval/')}" if self.eval_key else "Eval"
        chart.draw(self._series(self.eval_key, smooth=False) if self.eval_key else [])

    def _series(self, key: str, smooth: bool = True) -> list[RunSeries]:
        out = []
        for i, p in enumerate(self.run_dirs):
            steps, values = series_of(self.rows[p], key)
            shown = values
            if smooth and self.smoothing and values:
                series = MetricSeries(self.smoothing)
                for s, v in zip(steps, values, strict=True):
                    series.append(s, 0.0, v)
                # 12 significant digits: a constant stays exactly constant (textual-plot
                # cannot place ticks on a range of 1e-20, which float rounding would give)
                shown = [float(f"{v:.12g}") for v in series.ema]
            out.append(RunSeries(p.name, self.colour(i), steps, shown, last=values[-1] if values else None))
        return out

    def action_cycle_smoothing(self) -> None:
        i = min(range(len(SMOOTHING_STEPS)), key=lambda j: abs(SMOOTHING_STEPS[j] - self.smoothing))
        self.smoothing = SMOOTHING_STEPS[(i + 1) % len(SMOOTHING_STEPS)]
        self.draw()

    def action_back(self) -> None:
        self.app.pop_screen()


# ---------------------------------------------------------------- config diff


def outcome_rows(run_dirs: list[Path]) -> list[tuple[str, list[str]]]:
    """What each run ended with, shown under the differing keys: status, steps, final loss/reward, eval."""
    from engine.runs_index import read_run

    infos = []
    for p in run_dirs:
        try:
            infos.append(read_run(p))
        except (EngineError, OSError, ValueError):
            infos.append(None)
    rows: list[tuple[str, list[str]]] = [
        ("→ status", [i.status if i else "?" for i in infos]),
        ("→ steps", [f"{i.steps}/{i.max_steps}" if i else "?" for i in infos]),
        ("→ final loss", [fmt(i.final.get("loss")) if i else "?" for i in infos]),
        ("→ final reward", [fmt(i.final.get("reward")) if i else "?" for i in infos]),
    ]
    keys = [i.headline_eval()[0] for i in infos if i and i.headline_eval()[0]]
    if keys:
        key = keys[0]
        rows.append((f"→ {key}", [fmt(i.final_eval.get(key)) if i else "?" for i in infos]))
    return rows


class ConfigDiffScreen(Screen):
    HELP_TITLE = "Config diff"
    HELP = "Only the hyperparameters that differ between the selected runs (from each run's config.toml); every other key is the same in all of them. Below them (→), what each run ended with: status, steps, final loss and reward, and the eval headline."
    BINDINGS = [Binding("escape", "back", "Back", id="diff.back")]
    DEFAULT_CSS = """
    ConfigDiffScreen #diff-summary { height: auto; padding: 0 1; margin-top: 1; }
    ConfigDiffScreen #diff-table { height: 1fr; border: round $panel-lighten-2; }
    """

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = [Path(p) for p in run_dirs]
        self.rows: list[tuple[str, list[Any]]] = []
        self.outcomes: list[tuple[str, list[str]]] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            yield Static(id="diff-summary")
            yield DataTable(id="diff-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "rlhf-tui"
        self.sub_title = "config diff"
        table = self.query_one("#diff-table", DataTable)
        table.add_column("key", key="key")
        for i, p in enumerate(self.run_dirs):
            table.add_column(Text(p.name, style=f"bold {RUN_COLOURS[i % len(RUN_COLOURS)]}"), key=f"run{i}")
        summary = self.query_one("#diff-summary", Static)
        try:
            self.rows = config_diff(self.run_dirs)
        except EngineError as err:
            summary.update(Text(str(err), style="bold red"))
            return
        for key, values in self.rows:
            table.add_row(Text(key, style="bold"), *[Text("—" if v is None else ('""' if v == "" else str(v)), style="dim" if v is None else "") for v in values])
        self.outcomes = outcome_rows(self.run_dirs)
        for label, values in self.outcomes:
            table.add_row(Text(label, style="italic #5fd7ff"), *[Text(v, style="#5fd7ff") for v in values])
        if self.rows:
            summary.update(Text.assemble((f"{len(self.rows)} keys differ", "bold"), (f" between {len(self.run_dirs)} runs; all other keys are the same", "dim")))
        else:
            summary.update(Text(f"The {len(self.run_dirs)} runs have identical configs.", style="bold"))
        table.focus()

    def action_back(self) -> None:
        self.app.pop_screen()
