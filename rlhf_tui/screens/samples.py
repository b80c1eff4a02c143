"""Samples view: the prompts, completions, scores and advantages a PPO/GRPO run generates.

Reads the run's ``samples.jsonl`` (the engine writes every ``Sample`` event there) and keeps
reading it while the run goes on, whether the run trains in this app or in another process.
Filter by score (``> 0.5``, ``<= 0``, ``0..1``) or by text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from engine.rundir import JsonlTail
from rlhf_tui.monitoring import finite, fmt

if TYPE_CHECKING:
    from engine.run import Run

HELP = """\
What the policy generated during a PPO or GRPO run, one row per sample: the **step**, its
**score** (the reward model's or the reward function's), its **advantage**, the prompt and
the completion. New samples appear at the top while the run trains.

**/** filters: `> 0.5`, `>= 0`, `< 0`, `= 1`, `0..1` (a range) keep samples by score; any other
text keeps those whose prompt or completion contains it. **escape** clears the filter.
**s** cycles the order: newest first, lowest score first, highest score first. Reading
samples is how reward hacks are found: sort by the highest score and read what earns it.
"""

_CMP = re.compile(r"^\s*(<=|>=|<|>|==|=)\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?)\s*$", re.I)
_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d*)?)\s*\.\.\s*(-?\d+(?:\.\d*)?)\s*$")
ORDERS = ("newest", "lowest score", "highest score")


@dataclass
class SampleRow:
    index: int
    step: int
    prompt: str
    completion: str
    score: float | None
    advantage: float | None


def row_from(obj: dict[str, Any], index: int) -> SampleRow:
    try:
        step = int(obj.get("step", 0))
    except (TypeError, ValueError):
        step = 0
    return SampleRow(index, step, str(obj.get("prompt", "")), str(obj.get("completion", "")), finite(obj.get("score")), finite(obj.get("advantage")))


def parse_filter(text: str) -> tuple[str, Callable[[SampleRow], bool]]:
    """(what it means, in words; the predicate) for the filter box's text."""
    if not text.strip():
        return "", lambda r: True
    m = _CMP.match(text)
    if m:
        op, value = m.group(1), float(m.group(2))
        tests: dict[str, Callable[[float], bool]] = {
            "<": lambda s: s < value, "<=": lambda s: s <= value, ">": lambda s: s > value,
            ">=": lambda s: s >= value, "=": lambda s: s == value, "==": lambda s: s == value,
        }
        test = tests[op]
        return f"score {op} {value:g}", lambda r: r.score is not None and test(r.score)
    m = _RANGE.match(text)
    if m:
        lo, hi = sorted((float(m.group(1)), float(m.group(2))))
        return f"{lo:g} ≤ score ≤ {hi:g}", lambda r: r.score is not None and lo <= r.score <= hi
    needle = text.strip().lower()
    return f"text “{text.strip()}”", lambda r: needle in r.prompt.lower() or needle in r.completion.lower()


def order_rows(rows: list[SampleRow], order: str) -> list[SampleRow]:
    if order == "lowest score":
        return sorted(rows, key=lambda r: (r.score is None, r.score if r.score is not None else 0.0, -r.index))
    if order == "highest score":
        return sorted(rows, key=lambda r: (r.score is None, -(r.score if r.score is not None else 0.0), -r.index))
    return sorted(rows, key=lambda r: -r.index)


def _flat(text: str, width: int) -> str:
    flat = text.replace("\n", "⏎ ").strip()
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class SamplesScreen(Screen):
    HELP_TITLE = "Samples"
    HELP = HELP
    DEFAULT_CSS = """
    SamplesScreen #samples-summary { height: auto; padding: 0 1; margin-top: 1; }
    SamplesScreen #samples-filter { margin: 0 1; }
    SamplesScreen #samples { height: 1fr; border: round $panel-lighten-2; border-title-style: bold; border-subtitle-color: $text-muted; }
    SamplesScreen #samples:focus { border: round $accent; }
    SamplesScreen #sample-detail { height: auto; max-height: 14; overflow-y: auto; border: round $panel-lighten-2; border-title-style: bold; padding: 0 1; }
    """
    BINDINGS = [
        Binding("slash", "filter", "Filter", id="samples.filter", tooltip="Filter by score (> 0.5, 0..1) or text"),
        Binding("s", "cycle_order", "Order", id="samples.order", tooltip="Newest / lowest score / highest score first"),
        Binding("escape", "back", "Back", id="samples.back", tooltip="Clear the filter, or go back"),
    ]
    POLL_S = 0.5

    def __init__(self, run: Run | None = None, run_dir: str | None = None) -> None:
        super().__init__()
        self.run = run
        self.run_dir = run_dir
        self.rows: list[SampleRow] = []
        self.filter_text = ""
        self.order = "newest"
        self._tail: JsonlTail | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="samples-summary")
        yield Input(placeholder="> 0.5 · <= 0 · 0..1 · or text (escape clears)", id="samples-filter")
        yield DataTable(id="samples", cursor_type="row", zebra_stripes=True)
        yield Static(id="sample-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "rlhf-tui"
        self.sub_title = "samples"
        self.query_one("#samples-filter").display = False
        table = self.query_one("#samples", DataTable)
        table.add_column("Step", key="step")
        table.add_column("Score", key="score")
        table.add_column("Adv", key="advantage")
        table.add_column("Prompt", key="prompt", width=34)
        table.add_column("Completion", key="completion", width=52)
        self.poll()
        self.refresh_table()
        self.set_interval(self.POLL_S, self.poll)
        table.focus()

    # ------------------------------------------------------------------ reading

    def samples_path(self) -> Path | None:
        if self.run_dir:
            return Path(self.run_dir) / "samples.jsonl"
        if self.run is not None and self.run.directory is not None:
            return self.run.directory.samples_path
        return None

    def poll(self) -> int:
        """Read samples appended since the last poll; returns how many arrived."""
        if self._tail is None:
            path = self.samples_path()
            if path is None:
                return 0
            self._tail = JsonlTail(path)
        new = self._tail.read_new()
        if not new:
            return 0
        start = len(self.rows)
        self.rows.extend(row_from(obj, start + i) for i, obj in enumerate(new))
        if self.is_mounted:
            self.refresh_table()
        return len(new)

    # ------------------------------------------------------------------ drawing

    def visible(self) -> list[SampleRow]:
        _, keep = parse_filter(self.filter_text)
        return order_rows([r for r in self.rows if keep(r)], self.order)

    def refresh_table(self) -> None:
        table = self.query_one("#samples", DataTable)
        current = self._current_index()
        table.clear()
        rows = self.visible()
        for r in rows:
            score = Text(fmt(r.score, 3), justify="right", style="#87d75f" if (r.score or 0) > 0 else ("#ff8787" if (r.score or 0) < 0 else ""))
            table.add_row(Text(str(r.step), justify="right"), score, Text(fmt(r.advantage, 3), justify="right"),
                          _flat(r.prompt, 34), _flat(r.completion, 52), key=str(r.index))
        if current is not None and any(r.index == current for r in rows) and self.order != "newest":
            table.move_cursor(row=table.get_row_index(str(current)))
        path = self.samples_path()
        table.border_title = "Samples"
        table.border_subtitle = str(path) if path else "waiting for the run's folder"
        self._summary(len(rows))
        self._detail()

    def _summary(self, shown: int) -> None:
        t = Text()
        if not self.rows:
            t.append("No samples yet. ", style="bold")
            t.append("PPO and GRPO runs write them as they generate (other algorithms do not).", style="dim")
        else:
            steps = [r.step for r in self.rows]
            last = max(steps)
            latest = [r.score for r in self.rows if r.step == last and r.score is not None]
            t.append(f"{len(self.rows)} samples", style="bold")
            t.append(f" · steps {min(steps)}–{last}", style="dim")
            if latest:
                t.append(f" · mean score at step {last}: ")
                t.append(fmt(sum(latest) / len(latest), 3), style="bold cyan")
        words, _ = parse_filter(self.filter_text)
        if words:
            t.append(f" · {shown} with {words}", style="bold yellow")
        t.append(f" · {self.order} first", style="dim")
        self.query_one("#samples-summary", Static).update(t)

    def _current_index(self) -> int | None:
        table = self.query_one("#samples", DataTable)
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001
            return None
        return int(key) if key is not None else None

    def _detail(self) -> None:
        panel = self.query_one("#sample-detail", Static)
        idx = self._current_index()
        if idx is None or idx >= len(self.rows):
            panel.display = False
            return
        r = self.rows[idx]
        panel.display = True
        panel.border_title = f"step {r.step} · score {fmt(r.score, 3)} · advantage {fmt(r.advantage, 3)}"
        t = Text()
        t.append("prompt\n", style="bold dim")
        t.append(r.prompt.rstrip("\n") + "\n")
        t.append("completion\n", style="bold dim")
        t.append(r.completion)
        panel.update(t)

    @on(DataTable.RowHighlighted, "#samples")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    # ------------------------------------------------------------------ actions

    def action_filter(self) -> None:
        box = self.query_one("#samples-filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#samples-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.refresh_table()

    @on(Input.Submitted, "#samples-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#samples", DataTable).focus()

    def action_cycle_order(self) -> None:
        self.order = ORDERS[(ORDERS.index(self.order) + 1) % len(ORDERS)]
        self.refresh_table()

    def action_back(self) -> None:
        box = self.query_one("#samples-filter", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.filter_text = ""
            self.refresh_table()
            self.query_one("#samples", DataTable).focus()
            return
        self.app.pop_screen()
