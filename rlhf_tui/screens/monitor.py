"""The run monitor: live charts, progress with ETA, values, eval, memory, log and controls.

It shows either a Run training inside the app (``run=``; pause / resume / cancel work) or a
run directory another process writes (``run_dir=``; read-only). Events arrive as batched
:class:`RunEventsArrived` messages and are folded into a :class:`RunState`; widgets are
redrawn from a timer at ``REDRAW_HZ``, never per event.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, ProgressBar, RichLog, Sparkline, Static

from engine import events as ev
from engine.algorithms.registry import REGISTRY
from rlhf_tui import heap
from rlhf_tui.messages import FollowFailed, RunEnded, RunEventsArrived
from rlhf_tui.monitoring import PANELS, SMOOTHING_STEPS, RunState, duration, fmt, gigabytes
from rlhf_tui.screens.dialogs import ConfirmScreen
from rlhf_tui.widgets.chart import MetricChart

if TYPE_CHECKING:
    from engine.run import Run

REDRAW_HZ = 10  # timer ticks per second; each tick repaints one area (AREA_TURNS)
AREA_TURNS = ("bar", "chart", "side", "chart")  # charts get every other tick: each ~0.8 s
KEY_QUIET_S = 0.5  # after a chart key, timer re-plots wait this long (the key's own go first)
# Statics whose size never depends on their text (fixed in app.tcss)
FIXED_SIZE = {"#status-badge", "#progress-text", "#chart-mode", "#values", "#memory-text", "#eval-others"}
NO_KL = {a.name: a.title for a in REGISTRY if not a.kl}  # algorithms without a reference: KL is always null
CHART_COLOURS = {"loss": "#5fafff", "kl": "#d787ff", "reward": "#87d75f", "tokens_per_sec": "#ffaf5f"}
STATUS_STYLE = {
    "waiting": ("WAITING", "black on grey70"),
    "loading": ("LOADING", "black on #5fafff"),
    "running": ("RUNNING", "black on #87d75f"),
    "pausing": ("PAUSING…", "black on #ffd75f"),
    "paused": ("PAUSED", "black on #ffd75f"),
    "resuming": ("RESUMING…", "black on #87d75f"),
    "cancelling": ("CANCELLING…", "black on #ff875f"),
    "completed": ("COMPLETED", "black on #5fd7af"),
    "cancelled": ("CANCELLED", "black on #ff875f"),
    "failed": ("FAILED", "white on #d70000"),
}

HELP = """\
Live view of one training run. The four charts show **loss**, **KL**, **reward** and
**tokens/second** against the step: the bright line is the EMA-smoothed curve, the faint one
behind it the raw values. What KL and reward mean depends on the algorithm (for DPO: reward is
the implicit reward margin, KL how far the log-probs of the data's answers moved from the
reference; for SFT: reward is token accuracy and KL is not defined).

The side panel shows the held-out **eval** score: `eval/task_score` (the share of held-out
prompts the model answers exactly right, greedy; the same axis for SFT, DPO, PPO and GRPO)
when the task has one, else e.g. `eval/rewards/accuracies` (the fraction of held-out pairs
the model prefers correctly), with its change since step 0; the latest value of every metric
and MLX memory (active now and peak).

**space** pauses and resumes (takes effect between steps), **c** cancels after the current
step (a checkpoint is written; asks first). **l** toggles a log-scale y axis (values ≤ 0,
and those more than six decades below the largest, are left out), **x** switches
the x axis between step and wall time, **m** cycles the smoothing. Click a chart to zoom
(+/-) and pan (arrows); **r** on a chart resets it. When the run has ended, **escape** goes
back to the presets.

**Alerts** (a notice and a red log line): the loss or KL turning NaN, infinite or missing; the
smoothed loss climbing to 3× its best (and at least 1 above it); for PPO and GRPO, whose KL is
measured on the policy's own samples, the smoothed KL climbing to 10× its best (and 5 above).
DPO's KL grows by design as the policy leaves the reference, so it raises no alert.

A run followed from its directory (`rlhf-tui monitor RUN_DIR`) is read-only: pause and
cancel belong to the process that trains it.
"""


def value_lines(rows: list[tuple[str, str]], width: int) -> Text:
    """Name on the left (dim), value on the right, one row a line, cut to ``width``.

    Plain text rather than a rich Table: a table re-lays itself out on every render, which
    cost ~10 ms a frame here, as much as a chart."""
    t = Text(no_wrap=True, overflow="crop")
    for i, (k, v) in enumerate(rows):
        room = max(1, width - len(v) - 1)
        name = k if len(k) <= room else k[: max(0, room - 1)] + "…"
        if i:
            t.append("\n")
        t.append(name.ljust(room), style="dim")
        t.append(" " + v)
    return t


def cancel_dialog(step: int) -> ConfirmScreen:
    return ConfirmScreen(
        "Cancel this run?",
        f"Training stops after the current step (now {step}) and a checkpoint is written; "
        "you can resume it later with 'rlhf-tui resume'.",
        yes="Cancel run",
        no="Keep training",
    )


class MonitorScreen(Screen):
    HELP_TITLE = "Run monitor"
    AUTO_FOCUS = "#log"  # not a chart: their zoom/pan keys would crowd the footer
    HELP = HELP
    BINDINGS = [
        Binding("space", "toggle_pause", "Pause/Resume", id="monitor.pause", tooltip="Pause or resume training between steps"),
        Binding("c", "cancel_run", "Cancel run", id="monitor.cancel", tooltip="Stop after this step, with a checkpoint"),
        Binding("l", "toggle_log_y", "Log y", id="monitor.log_y", tooltip="Log-scale y axis on the charts"),
        Binding("x", "toggle_x", "Step/time", id="monitor.x_axis", tooltip="x axis: step or wall time"),
        Binding("m", "cycle_smoothing", "Smoothing", id="monitor.smoothing", tooltip="Cycle the EMA smoothing weight"),
        Binding("i", "app.inspect", "Pairs", id="monitor.inspect", tooltip="Inspect this run's pairs, scored by its checkpoints or live weights"),
        Binding("h", "app.history", "History", id="monitor.history", show=False, tooltip="Every run: reopen, overlay, compare, resume, export"),
        Binding("S", "export_svg", "Save SVG", id="monitor.export_svg", show=False, tooltip="Save the charts as an SVG picture in the run directory"),
        Binding("escape", "back", "Presets", id="monitor.back", tooltip="Back to the presets (when the run has ended)"),
    ]

    def __init__(self, run: Run | None = None, run_dir: str | None = None, title: str = "") -> None:
        super().__init__()
        self.run = run
        self.run_dir = run_dir
        self.state = RunState()
        self.log_y = False
        self.wall_time = False
        self.requested = ""  # "pausing" | "resuming" | "cancelling" while the engine has not answered yet
        self._drawn_version = -1
        self._bridge: Any = None
        self._follower: Any = None
        self.events_received = 0
        self.batches_received = 0
        self.alerts: list[str] = []
        self.run_title = title
        self._content_keys: dict[str, Any] = {}
        self._dirty_charts: set[str] = set()
        self._quiet_until = 0.0
        self._next_chart = 0
        self._next_area = 0
        self._stale_areas: set[str] = set()
        self._content_lines: dict[str, int | None] = {}

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="run-bar"):
            yield Static(id="status-badge")
            yield ProgressBar(total=100, show_eta=False, show_percentage=True, id="progress")
            yield Static(id="progress-text")
            yield Static(id="chart-mode")
        with Horizontal(id="monitor-body"):
            with Grid(id="charts"):
                for key, title in PANELS:
                    yield MetricChart(key, title, CHART_COLOURS[key], id=f"chart-{key}")
            with Vertical(id="side"):
                with Vertical(id="eval-panel", classes="panel"):
                    yield Static(id="eval-headline")
                    yield Sparkline([], id="eval-spark")
                    yield Static(id="eval-others")
                yield Static(id="values", classes="panel")
                with Vertical(id="memory-panel", classes="panel"):
                    yield Static(id="memory-text")
                    yield Sparkline([], id="memory-spark")
        yield Static(id="outcome")
        yield RichLog(id="log", markup=False, wrap=True, max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "rlhf-tui"
        self.sub_title = self.run_title or ("following " + self.run_dir if self.run_dir else "run monitor")
        self.query_one("#eval-panel").border_title = "Held-out eval"
        self.query_one("#values").border_title = "Latest values"
        self.query_one("#memory-panel").border_title = "MLX memory"
        self.query_one("#log").border_title = "Log"
        self.query_one("#outcome").display = False
        self.set_interval(1 / REDRAW_HZ, self.redraw)
        if self.run is not None:
            from rlhf_tui.bridge import RunBridge

            self._bridge = RunBridge(self.post_message)
            self.run.subscribe(self._bridge)
            if self.run.status == "created":
                self.run.start()
            self.write_log(Text("starting: loading the model and data…", style="dim"))
        elif self.run_dir is not None:
            from rlhf_tui.bridge import RunDirectoryFollower

            self._follower = RunDirectoryFollower(self.run_dir, self.post_message)
            self._follower.start()
            self.write_log(Text(f"following {self.run_dir} (read-only: pause and cancel belong to its own process)", style="dim"))
        self.redraw()

    def on_resize(self) -> None:
        self.call_after_refresh(self._draw_values)  # (its lines are cut to the panel's width)

    def on_unmount(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        if self._bridge is not None:
            self._bridge.stop()

    # ------------------------------------------------------------------ events in

    @on(RunEventsArrived)
    def _events_arrived(self, message: RunEventsArrived) -> None:
        message.stop()
        self.batches_received += 1
        self.apply_events(message.events)

    @on(FollowFailed)
    def _follow_failed(self, message: FollowFailed) -> None:
        self.write_log(Text(f"cannot follow the run: {message.error}", style="bold red"))
        self.notify(message.error, title="Following stopped", severity="error", timeout=10)

    def apply_events(self, events: tuple[ev.Event, ...] | list[ev.Event]) -> None:
        """Fold events into the state; log lines and alerts are written at once (cheap)."""
        before = (self.state.ended, self.requested)
        for event in events:
            self.events_received += 1
            alerts = self.state.apply(event)
            for text in alerts:
                self.raise_alert(text)
            self._log_event(event)
            if isinstance(event, ev.RunStarted):
                heap.settle()  # the model and its libraries are loaded: out of the GC's way
            if isinstance(event, ev.RunPaused | ev.RunResumed):
                self.requested = ""
            if isinstance(event, ev.TERMINAL_EVENTS):
                heap.release()  # the run's model and optimizer may be garbage now
                self.requested = ""
                self._ended(event)
        if (self.state.ended, self.requested) != before:
            self.refresh_bindings()  # (the footer is rebuilt: only when the keys on offer change)

    def _log_event(self, e: ev.Event) -> None:
        step = f"[{self.state.step:>5}] "
        if isinstance(e, ev.RunStarted):
            where = f" → {e.run_dir}" if e.run_dir else ""
            resumed = f", resuming at step {e.start_step}" if e.start_step else ""
            self.write_log(Text(f"{step}run {e.run_id} started: {e.algorithm}, {e.total_steps} steps, world size {e.world_size}{resumed}{where}", style="bold"))
        elif isinstance(e, ev.LogLine):
            self.write_log(Text(step + e.text, style="red" if e.level == "error" else ("yellow" if e.level == "warning" else "")))
        elif isinstance(e, ev.Alert):
            self.raise_alert(f"step {e.step}: {e.text}", from_engine=True)
        elif isinstance(e, ev.CheckpointSaved):
            self.write_log(Text(f"{step}checkpoint saved: {e.path}", style="green"))
        elif isinstance(e, ev.EvalMetrics):
            parts = "  ".join(f"{k} {fmt(v)}" for k, v in e.metrics.items() if k.startswith("eval/") and k.count("/") <= 2)
            self.write_log(Text(f"{step}eval: {parts}", style="cyan"))
        elif isinstance(e, ev.PhaseChanged) and e.done in (0,) and e.phase:
            self.write_log(Text(f"{step}{e.phase}…", style="dim"))
        elif isinstance(e, ev.RunPaused):
            self.write_log(Text(f"{step}paused after step {e.step}", style="yellow"))
        elif isinstance(e, ev.RunResumed):
            self.write_log(Text(f"{step}resumed", style="yellow"))
        elif isinstance(e, ev.RunFailed):
            self.write_log(Text(f"{step}FAILED: {e.error}", style="bold red"))
            if e.traceback and not e.bad_input:
                self.write_log(Text(e.traceback.rstrip(), style="red dim"))
        elif isinstance(e, ev.RunCancelled):
            self.write_log(Text(f"{step}cancelled", style="bold #ff875f"))
        elif isinstance(e, ev.RunFinished):
            self.write_log(Text(f"{step}completed", style="bold green"))

    def write_log(self, text: Text) -> None:
        self.query_one("#log", RichLog).write(text)

    def raise_alert(self, text: str, *, from_engine: bool = False) -> None:
        self.alerts.append(text)
        self.write_log(Text(f"[{self.state.step:>5}] ALERT: {text}", style="bold #ff5f5f"))
        self.notify(text, title="Training alert", severity="warning", timeout=8)

    def _ended(self, event: ev.Event) -> None:
        s = self.state
        summary = s.summary or {}
        outcome = self.query_one("#outcome", Static)
        outcome.display = True
        outcome.set_classes(s.status)
        outcome.border_title = {"completed": "Run completed", "cancelled": "Run cancelled", "failed": "Run failed"}[s.status]
        outcome.update(self._outcome_text(summary))
        if s.status == "failed":
            self.notify(s.error or "the run failed", title="Run failed", severity="error", timeout=15)
        elif s.status == "cancelled":
            self.notify(f"Checkpoint at step {summary.get('last_checkpoint')}", title="Run cancelled", timeout=6)
        else:
            self.notify(f"Saved in {summary.get('run_dir') or s.run_dir}", title="Run completed", timeout=8)
        self.post_message(RunEnded(s.status, summary))
        self.redraw(force=True)

    def _outcome_text(self, summary: dict[str, Any]) -> Text:
        s = self.state
        t = Text()
        if s.status == "failed":
            t.append(s.error or str(summary.get("error", "")), style="bold red")
            t.append("\n")
        t.append(f"{summary.get('steps', s.step)}/{summary.get('max_steps', s.total_steps)} steps", style="bold")
        t.append(f" in {duration(summary.get('elapsed_s'))}")
        key, value = s.headline_eval()
        if key:
            t.append(f" · {key} ", style="dim")
            t.append(fmt(value), style="bold cyan")
        final = summary.get("final_metrics") or {}
        for k in ("loss", "kl", "reward"):
            if final.get(k) is not None:
                t.append(f" · {k} {fmt(final.get(k))}", style="dim")
        run_dir = summary.get("run_dir") or s.run_dir
        if run_dir:
            t.append("\nsaved in ")
            t.append(run_dir, style="bold underline")
            if summary.get("last_checkpoint") is not None:
                t.append(f"  (last checkpoint: step {summary.get('last_checkpoint')})", style="dim")
            if s.status != "completed" or summary.get("steps", 0) < summary.get("max_steps", 0):
                t.append(f"\ncontinue with: rlhf-tui resume {run_dir}", style="dim")
        return t

    # ------------------------------------------------------------------ drawing (timer)

    def redraw(self, force: bool = False) -> None:
        """Timer tick: repaint one area of the screen, the next one that is out of date.

        Areas are the run bar, the side panels and each chart. Textual repaints the box
        around everything that changed in a frame, so touching the top bar, the side panel
        and a chart in one tick would repaint nearly the whole screen (~40 ms here); one
        area a tick keeps every frame small, so a key press never waits behind a big one.
        ``force`` draws everything now (tests, snapshots, the end of a run).
        """
        s = self.state
        if s.version != self._drawn_version or force:
            self._drawn_version = s.version
            self._stale_areas.update(("bar", "side"))
            self._restyle_charts()
        if force:
            self._draw_area("bar")
            self._draw_area("side")
            for key in list(self._dirty_charts):
                self._draw_chart(key)
            return
        charts_due = bool(self._dirty_charts) and time.monotonic() >= self._quiet_until
        for offset in range(len(AREA_TURNS)):
            area = AREA_TURNS[(self._next_area + offset) % len(AREA_TURNS)]
            if area in self._stale_areas or (area == "chart" and charts_due):
                self._next_area = (self._next_area + offset + 1) % len(AREA_TURNS)
                self._draw_area(area)
                return

    def _draw_area(self, area: str) -> None:
        self._stale_areas.discard(area)
        if area == "bar":
            self._draw_bar()
        elif area == "side":
            self._draw_eval()
            self._draw_values()
            self._draw_memory()
        else:  # the next out-of-date chart, round robin
            for key, _ in PANELS[self._next_chart :] + PANELS[: self._next_chart]:
                if key in self._dirty_charts:
                    self._draw_chart(key)
                    self._next_chart = ([k for k, _ in PANELS].index(key) + 1) % len(PANELS)
                    return

    def _restyle_charts(self) -> None:
        """The chart-mode note and empty-state texts now (cheap); plots marked for redraw.

        A chart's title (its latest value) changes with its plot, never on its own: a new
        title repaints the whole panel, so four titles per step would cost four panels."""
        s = self.state
        mode = Text()
        mode.append("log-y, ≤0 hidden" if self.log_y else "linear y", style="bold" if self.log_y else "")
        mode.append(" · x ", style="dim")
        mode.append("time" if self.wall_time else "step", style="bold" if self.wall_time else "")
        mode.append(" · EMA ", style="dim")
        mode.append(f"{s.smoothing:g}" if s.smoothing else "off")
        self._set("#chart-mode", mode)
        for key, _ in PANELS:
            chart = self.query_one(f"#chart-{key}", MetricChart)
            if key == "kl" and s.algorithm in NO_KL:
                chart.set_empty_text(f"KL is not defined for {NO_KL[s.algorithm]}")
            elif s.status == "loading":
                chart.set_empty_text(f"{s.phase or 'loading'}…")
            elif s.ended and not len(s.series[key]):
                chart.set_empty_text("no values were logged")
            if chart.drawn != chart.wanted(s.series[key], wall_time=self.wall_time, log_y=self.log_y, markers=self._markers(key)):
                self._dirty_charts.add(key)

    def _after_chart_key(self) -> None:
        """A key changed how charts look: the mode note shows in the next frame (a one-line
        repaint), then the plots in the frame after, while timer re-plots keep out of the way."""
        self._quiet_until = time.monotonic() + KEY_QUIET_S
        self._restyle_charts()
        self.call_after_refresh(self._drain_charts)

    def _drain_charts(self) -> None:
        """Redraw the charts the key changed, in one frame (the grid is one box on screen)."""
        for key in [k for k, _ in PANELS if k in self._dirty_charts]:
            self._draw_chart(key)

    def _draw_chart(self, key: str) -> None:
        self._dirty_charts.discard(key)
        chart = self.query_one(f"#chart-{key}", MetricChart)
        chart.redraw(self.state.series[key], wall_time=self.wall_time, log_y=self.log_y, markers=self._markers(key))

    def _markers(self, key: str) -> tuple[float, ...]:
        """Checkpoint positions on the x axis (steps, or their elapsed time in wall-time mode)."""
        steps = self.state.checkpoint_steps
        if not self.wall_time:
            return tuple(float(x) for x in steps)
        series = self.state.series[key]
        where = dict(zip(series.steps, series.elapsed, strict=False))
        return tuple(where[s] for s in steps if s in where)

    @property
    def charts_current(self) -> bool:
        """True when every chart shows the current data and axis settings."""
        self._restyle_charts()
        return not self._dirty_charts

    def _set(self, selector: str, content: Any, key: Any = None) -> None:
        """Update a Static only when its content changed, and without a layout pass when
        its size cannot change (a layout pass would make every chart re-render)."""
        widget = self.query_one(selector, Static)
        marker = key if key is not None else (content.plain if isinstance(content, Text) else content)
        if isinstance(content, Text):
            marker = (marker, tuple(str(sp) for sp in content.spans))
        if self._content_keys.get(selector) == marker:
            return
        old_lines = self._content_lines.get(selector)
        lines = content.plain.count("\n") + 1 if isinstance(content, Text) else None
        self._content_keys[selector] = marker
        self._content_lines[selector] = lines
        fixed = selector in FIXED_SIZE or (lines is not None and lines == old_lines)
        widget.update(content, layout=not fixed)

    @staticmethod
    def _show(widget: Any, visible: bool) -> None:
        if widget.display != visible:
            widget.display = visible

    def _draw_bar(self) -> None:
        s = self.state
        status = self.requested if self.requested and not s.ended else s.status
        label, style = STATUS_STYLE.get(status, (status.upper(), "reverse"))
        self._set("#status-badge", Text(f" {label} ", style=style + " bold"))
        bar = self.query_one("#progress", ProgressBar)
        if s.total_steps or not s.phase_total:
            bar.update(total=max(s.total_steps, 1), progress=s.step if s.total_steps else 0)
        else:  # before the first step: the loading phase's own progress
            bar.update(total=s.phase_total, progress=s.phase_done)
        text = Text()
        narrow = self.has_class("-narrow")
        if s.total_steps:
            text.append(f"step {s.step}/{s.total_steps}", style="bold")
            if not s.ended:
                text.append(f"  ETA {duration(s.eta_s)}", style="bold")
            key, value = s.headline_eval()
            if key and narrow:  # the eval panel is hidden on narrow terminals
                text.append(f"  {key.rsplit('/', 1)[-1]} ", style="dim")
                text.append(fmt(value, 3), style="bold #5fd7ff")
            text.append(f"  elapsed {duration(s.elapsed_s)}")
        elif s.phase:
            text.append(f"{s.phase}" + (f" {s.phase_done}/{s.phase_total}" if s.phase_total else "…"))
        if s.phase and s.total_steps and not s.ended:
            prog = f" {s.phase_done}/{s.phase_total}" if s.phase_total else ""
            text.append(f"  · {s.phase}{prog}", style="dim")
        if s.algorithm:
            text.append(f"  · {s.algorithm.upper()}", style="cyan")
        if s.world_size > 1:
            text.append(f" × {s.world_size} ranks", style="cyan")
        self._set("#progress-text", text)

    def _draw_eval(self) -> None:
        s = self.state
        key, value = s.headline_eval()
        spark = self.query_one("#eval-spark", Sparkline)
        if not key:
            self._set("#eval-headline", Text("no evaluation yet", style="dim"))
            self._show(spark, False)
            self._set("#eval-others", "")
            return
        hist = s.eval_history.get(key, [])
        t = Text()
        t.append(fmt(value), style="bold #5fd7ff")
        t.append(f"  {key.removeprefix('eval/')}", style="bold")
        t.append(f"\nat step {s.latest_eval.get('step', '?')}", style="dim")
        if len(hist) > 1:
            delta = hist[-1] - hist[0]
            t.append(f"  {'▲' if delta >= 0 else '▼'} {delta:+.3f} since first", style="green" if (delta >= 0) != (key == "eval/loss") else "red")
        self._set("#eval-headline", t)
        self._show(spark, len(hist) > 1)
        if spark.data != hist:
            spark.data = list(hist)
        rest = [(k, v) for k, v in s.latest_eval.items() if k.startswith("eval/") and k != key and k.count("/") <= 2]
        self._set("#eval-others", Text("  ".join(f"{k.removeprefix('eval/')} {fmt(v, 3)}" for k, v in rest[:6]), style="dim"))

    def _draw_values(self) -> None:
        rows = self.state.table_rows()
        if not rows:
            self._set("#values", Text("values appear after the first step", style="dim"))
            return
        width = self.query_one("#values", Static).content_size.width or 30
        self._set("#values", value_lines(rows, width), key=(width, tuple(rows)))

    def _draw_memory(self) -> None:
        s = self.state
        mem = s.memory_active
        spark = self.query_one("#memory-spark", Sparkline)
        if not mem:
            self._set("#memory-text", Text("—", style="dim"))
            self._show(spark, False)
            return
        self._set("#memory-text", Text.assemble(("active ", "dim"), (gigabytes(mem[-1]), "bold"), ("  peak ", "dim"), (gigabytes(s.memory_peak), "bold")))
        self._show(spark, len(mem) > 1)
        spark.data = mem[-120:]

    # ------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        ended = self.state.ended
        if action in ("toggle_pause", "cancel_run"):
            if self.run is None or ended:
                return False  # followed runs are read-only, ended ones final: hide the keys
            return None if self.requested == "cancelling" else True
        if action == "back":
            return True if (ended or self.run is None) else None
        return True

    def action_toggle_pause(self) -> None:
        run = self.run
        if run is None or self.state.ended:
            return
        if self.state.status == "paused" or self.requested == "pausing":
            run.resume()
            self.requested = "resuming" if self.state.status == "paused" else ""
            self._answer_key(Text(f"[{self.state.step:>5}] resuming…", style="yellow"))
        else:
            run.pause()
            self.requested = "pausing"
            self._answer_key(Text(f"[{self.state.step:>5}] pausing after the current step…", style="yellow"))

    def _answer_key(self, line: Text) -> None:
        """The status badge now; the log line in the frame after (the badge is at the top,
        the log at the bottom: one frame with both would repaint the whole screen)."""
        self._draw_area("bar")
        self.call_after_refresh(self.write_log, line)

    def action_cancel_run(self) -> None:
        if self.run is None or self.state.ended:
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.cancel_now()

        self.app.push_screen(cancel_dialog(self.state.step), done)

    def cancel_now(self) -> None:
        if self.run is None or self.state.ended:
            return
        self.run.cancel()
        self.requested = "cancelling"
        self.refresh_bindings()
        self._answer_key(Text(f"[{self.state.step:>5}] cancelling after the current step…", style="#ff875f"))

    def action_toggle_log_y(self) -> None:
        self.log_y = not self.log_y
        self._after_chart_key()

    def action_toggle_x(self) -> None:
        self.wall_time = not self.wall_time
        self._after_chart_key()

    def action_cycle_smoothing(self) -> None:
        steps = SMOOTHING_STEPS
        i = min(range(len(steps)), key=lambda j: abs(steps[j] - self.state.smoothing))
        new = steps[(i + 1) % len(steps)]
        self.state.set_smoothing(new)
        self._after_chart_key()

    def action_export_svg(self) -> None:
        """Save what the monitor shows (charts, values, log) as an SVG picture."""
        self.redraw(force=True)
        folder = Path(self.state.run_dir or self.run_dir or ".")
        name = f"charts-step-{self.state.step:06d}.svg"
        try:
            path = self.app.save_screenshot(filename=name, path=str(folder))
        except OSError as err:
            self.notify(f"{folder}: cannot save the picture ({err.strerror or err})", severity="error")
            return
        self.notify(f"Saved {path}", title="Charts exported", timeout=6)

    def action_back(self) -> None:
        if self.run is not None and not self.state.ended:
            self.notify("The run is still training: pause it (space) or cancel it (c) first.", severity="warning")
            return
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.app.show_presets()  # type: ignore[attr-defined]

    def palette_commands(self) -> list[tuple[str, str, Any]]:
        cmds = [
            ("Monitor: toggle log-scale y", "Charts: log10 y axis on/off", self.action_toggle_log_y),
            ("Monitor: x axis step / wall time", "Charts: switch the x axis", self.action_toggle_x),
            ("Monitor: cycle smoothing", "EMA weight 0 → 0.6 → 0.8 → 0.9 → 0.97", self.action_cycle_smoothing),
            ("Monitor: save charts as SVG", "A picture of the monitor, saved in the run directory (S)", self.action_export_svg),
        ]
        if self.run is not None and not self.state.ended:
            cmds += [
                ("Run: pause / resume", "Pause or resume training between steps", self.action_toggle_pause),
                ("Run: cancel", "Stop after this step with a checkpoint (asks first)", self.action_cancel_run),
            ]
        return cmds
