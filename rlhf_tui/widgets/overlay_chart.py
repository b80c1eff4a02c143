"""One metric of several runs on the same axes, one colour per run (the history's overlay)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Container
from textual.widgets import Static
from textual_plot import HiResMode, NumericAxisFormatter

from rlhf_tui.widgets.fast_plot import FastPlotWidget

RUN_COLOURS = ("#5fafff", "#ff875f", "#87d75f", "#d787ff", "#ffd75f", "#5fd7d7", "#ff5fd7", "#afafaf")


@dataclass
class RunSeries:
    """One run's values of one metric against its steps."""

    label: str
    colour: str
    steps: list[float]
    values: list[float]
    last: float | None = None  # the last raw value (``values`` may be smoothed)


def series_of(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` in metrics rows, skipping rows without a finite value."""
    xs, ys = [], []
    for r in rows:
        v, s = r.get(key), r.get("step")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not isinstance(s, (int, float)):
            continue
        if v != v or v in (float("inf"), float("-inf")):
            continue
        xs.append(float(s))
        ys.append(float(v))
    return xs, ys


class OverlayChart(Container):
    """A titled chart with one line per run; the last value of each run in the subtitle."""

    DEFAULT_CSS = """
    OverlayChart {
        border: round $panel-lighten-2; border-title-style: bold; border-subtitle-color: $text-muted;
        height: 1fr; width: 1fr;
    }
    OverlayChart > PlotWidget { height: 1fr; width: 1fr; }
    OverlayChart > .empty { height: 1fr; width: 1fr; content-align: center middle; color: $text-muted; }
    """

    def __init__(self, key: str, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.key = key
        self.title = title
        self.border_title = title
        self.lines_drawn = 0
        self.drawn: list[RunSeries] = []

    def compose(self) -> ComposeResult:
        yield Static("no run logged this metric", classes="empty")
        yield FastPlotWidget.panel()

    def draw(self, series: Sequence[RunSeries]) -> None:
        plot = self.query_one(FastPlotWidget)
        empty = self.query_one(".empty", Static)
        drawn = [s for s in series if s.steps]
        self.lines_drawn = len(drawn)
        self.drawn = drawn
        if not drawn:
            plot.display, empty.display = False, True
            self.border_subtitle = ""
            return
        plot.display, empty.display = True, False
        plot.clear()
        plot.set_x_formatter(NumericAxisFormatter())
        plot.set_y_formatter(NumericAxisFormatter())
        for s in drawn:
            plot.plot(s.steps, s.values, line_style=f"bold {s.colour}", hires_mode=HiResMode.BRAILLE)
        self.border_subtitle = "  ".join(f"[{s.colour}]{(s.last if s.last is not None else s.values[-1]):.4g}[/]" for s in drawn)
