"""A live metric chart: the raw curve faint behind its EMA, drawn by textual-plot."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from textual.app import ComposeResult
from textual.containers import Container
from textual.widgets import Static
from textual_plot import DurationFormatter, HiResMode, NumericAxisFormatter

from rlhf_tui.monitoring import MetricSeries, fmt
from rlhf_tui.widgets.fast_plot import FastPlotWidget


class Log10Formatter(NumericAxisFormatter):
    """Ticks placed on log10(y), labelled with y itself."""

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return [compact(10**t) for t in ticks]


def compact(v: float) -> str:
    """A tick label that fits the 8-column margin: 3.16k, 0.25, 3e-05."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    if a >= 0.01 or a == 0:
        return f"{v:.3g}"
    return f"{v:.0e}"


class MetricChart(Container):
    """One panel of the monitor. ``redraw`` is called from a timer, never per step."""

    DEFAULT_CSS = """
    MetricChart {
        border: round $panel-lighten-2;
        border-title-color: $text;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
        padding: 0 0;
        height: 1fr;
        width: 1fr;
    }
    MetricChart:focus-within { border: round $accent; }
    MetricChart > PlotWidget { height: 1fr; width: 1fr; }
    MetricChart > .empty {
        height: 1fr; width: 1fr; content-align: center middle; color: $text-muted;
    }
    """

    def __init__(self, key: str, title: str, colour: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.key = key
        self.title = title
        self.colour = colour
        self.empty_text = "waiting for the first step…"
        self.border_title = title
        self.drawn_points = 0
        self.drawn: tuple = ()
        self.drawn_at = 0.0

    def compose(self) -> ComposeResult:
        yield Static(self.empty_text, classes="empty")
        yield FastPlotWidget.panel()

    def set_empty_text(self, text: str) -> None:
        if text != self.empty_text:
            self.empty_text = text
            self.query_one(".empty", Static).update(text, layout=False)

    @staticmethod
    def _show(widget: Any, visible: bool) -> None:
        if widget.display != visible:  # toggling display costs a layout pass
            widget.display = visible

    @staticmethod
    def wanted(series: MetricSeries, *, wall_time: bool, log_y: bool, markers: tuple[float, ...] = ()) -> tuple:
        """What a drawing of ``series`` with these settings is (compared with ``drawn``)."""
        return (len(series), series.smoothing, wall_time, log_y, markers)

    def set_labels(self, series: MetricSeries, *, wall_time: bool, log_y: bool) -> None:
        """Title with the latest value (cheap). The axis note changes with the plot itself:
        re-titling all four panels at once would repaint them all in one frame."""
        last, smooth = series.last, series.last_smoothed
        title = f"{self.title}  [b]{fmt(last)}[/b]" + (f"  [dim]ema {fmt(smooth)}[/dim]" if len(series) > 1 and series.smoothing > 0 else "")
        if self.border_title != title:
            self.border_title = title

    def _set_axis_note(self, *, wall_time: bool, log_y: bool) -> None:
        subtitle = ("log-y · " if log_y else "") + ("x: wall time" if wall_time else "x: step")
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle

    def redraw(self, series: MetricSeries, *, wall_time: bool, log_y: bool, markers: tuple[float, ...] = (), max_points: int = 240) -> None:
        """Re-plot; ``markers`` are x positions of checkpoints (dim vertical lines)."""
        plot = self.query_one(FastPlotWidget)
        empty = self.query_one(".empty", Static)
        self.set_labels(series, wall_time=wall_time, log_y=log_y)
        self._set_axis_note(wall_time=wall_time, log_y=log_y)
        self.drawn = self.wanted(series, wall_time=wall_time, log_y=log_y, markers=markers)
        self.drawn_at = time.perf_counter()
        if not len(series):
            self._show(plot, False)
            self._show(empty, True)
            return
        self._show(empty, False)
        self._show(plot, True)
        width = max(20, plot.size.width * 2) if plot.size.width else max_points
        x, raw, ema = series.xy(wall_time=wall_time, log_y=log_y, max_points=min(max_points, width))
        plot.clear()
        plot.set_x_formatter(DurationFormatter() if wall_time else NumericAxisFormatter())
        plot.set_y_formatter(Log10Formatter() if log_y else NumericAxisFormatter())
        if len(x) > 1:
            for m in markers:
                if x[0] <= m <= x[-1]:
                    plot.add_v_line(m, line_style="#3a3a3a")
        if len(x) > 1 and series.smoothing > 0:
            plot.plot(x, raw, line_style="grey37", hires_mode=HiResMode.BRAILLE)
        plot.plot(x, ema if series.smoothing > 0 else raw, line_style=f"bold {self.colour}", hires_mode=HiResMode.BRAILLE)
        plot.render_now()
        self.drawn_points = len(x)
