"""The pair inspector: browse, search and sort preference pairs; score them with a model.

Opens a preset's (or a run's) training or eval data, or any preference file. The table
shows each pair's prompt, chosen and rejected answers (truncated) and token lengths; the
panel below shows the pair under the cursor with chosen and rejected side by side, their
differences highlighted. Scoring (``c``) runs the base model, a run's checkpoint, a reward
model or the live run's current weights over every pair in a background worker; sorting by
the verdict (``m``) puts the pairs the model gets wrong first. Flag pairs (``f``) and save a
cleaned copy of the file without them (``w``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from engine.errors import Cancelled, EngineError
from engine.scoring import PairScore
from rlhf_tui.widgets.pair_view import PairView, fmt_score

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.run import Run

HELP = """\
Every preference pair of a data file: **prompt**, **chosen** and **rejected** answers
(truncated; the panel below shows the pair under the cursor in full, with the words that
differ between the two answers highlighted) and their lengths in tokens.

**/** searches (prompt, chosen and rejected; escape clears). **s** sorts by the next column,
**r** reverses; clicking a column header sorts by it too.

**c** scores every pair with a model, in the background (**x** stops it): the base model, a
checkpoint of any run in the runs folder, a reward model (a checkpoint of a reward run), or
the weights of the run training in this app right now (copied between steps; training is
not disturbed). Per pair you get the policy's and the reference's (base model's) log-probs
of each answer, the implicit reward margin `beta * ((pc - rc) - (pr - rr))` and whether the
model prefers the chosen answer (**✓**/**✗**; for DPO this is what `rewards/accuracies`
counts). **v** shows only the pairs the model gets wrong. **m** sorts by the margin, most wrong first: the pairs at the top are the ones the
model still gets wrong — and, when a well-trained model is confident against a label,
possibly mislabelled.

**f** flags the pair under the cursor; **w** saves a copy of the data file without the
flagged pairs, next to the original (`<name>.cleaned.jsonl`; the original is never changed).
**t** shows the pair under the cursor exactly as the model sees it: decoded from its token
ids, chat template and special tokens included (what `rlhf-tui data` prints).
**e** switches between the training and the eval data, **o** opens any other file.
"""


@dataclass
class PairRow:
    """One pair as the table shows it."""

    index: int
    line: int
    where: str
    prompt: str
    chosen: str
    rejected: str
    prompt_tokens: int | None = None
    chosen_tokens: int | None = None
    rejected_tokens: int | None = None
    score: PairScore | None = None
    prefers: bool | None = None
    verdict: float | None = None
    flagged: bool = False

    def as_pair(self) -> dict[str, str]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, "where": self.where}


# (header, sort key) for each column; None values sort last
COLUMNS: tuple[tuple[str, str], ...] = (
    ("#", "index"),
    ("Prompt", "prompt"),
    ("Chosen", "chosen"),
    ("Rejected", "rejected"),
    ("Tok p", "prompt_tokens"),
    ("Tok c", "chosen_tokens"),
    ("Tok r", "rejected_tokens"),
    ("log p c", "logp_chosen"),
    ("log p r", "logp_rejected"),
    ("Margin", "verdict"),
    ("OK", "prefers"),
    ("⚑", "flagged"),
)
TEXT_WIDTH = {"prompt": 26, "chosen": 20, "rejected": 20}
PAGE = 120  # rows added to the table at a time


def sort_value(row: PairRow, key: str) -> Any:
    if key == "logp_chosen":
        return row.score.policy_chosen if row.score else None
    if key == "logp_rejected":
        return row.score.policy_rejected if row.score else None
    value = getattr(row, key)
    return value.lower() if isinstance(value, str) else value


class PairTable:
    """The rows, the search filter and the sort order, kept apart from widgets."""

    def __init__(self, rows: list[PairRow] | None = None) -> None:
        self.rows: list[PairRow] = rows or []
        self.query = ""
        self.sort_key = "index"
        self.reverse = False
        self.only_wrong = False

    def visible(self) -> list[PairRow]:
        q = self.query.lower().strip()
        rows = [r for r in self.rows if not q or q in r.prompt.lower() or q in r.chosen.lower() or q in r.rejected.lower()]
        if self.only_wrong:
            rows = [r for r in rows if r.prefers is False]
        key = self.sort_key
        present = [r for r in rows if sort_value(r, key) is not None]
        missing = [r for r in rows if sort_value(r, key) is None]
        present.sort(key=lambda r: (sort_value(r, key), r.index), reverse=self.reverse)
        return present + missing

    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        if reverse is None:
            reverse = (not self.reverse) if key == self.sort_key else False
        self.sort_key, self.reverse = key, reverse

    @property
    def flagged(self) -> list[PairRow]:
        return [r for r in self.rows if r.flagged]

    @property
    def scored(self) -> list[PairRow]:
        return [r for r in self.rows if r.score is not None]


def one_line(text: str, width: int) -> str:
    flat = text.replace("\n", "⏎ ").strip()
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# ---------------------------------------------------------------- messages (worker -> screen)


@dataclass
class TokensCounted(Message):
    lengths: list[tuple[int, int, int]]
    path: str


@dataclass
class ScoringProgressed(Message):
    done: int
    total: int
    phase: str


@dataclass
class PairsScored(Message):
    scores: list[PairScore]
    kind: str
    label: str
    prefers: list[bool]
    verdicts: list[float]
    path: str


@dataclass
class ScoringEnded(Message):
    """Scoring stopped without results: cancelled or failed (``error``)."""

    error: str


# ---------------------------------------------------------------- choosing what scores


@dataclass(frozen=True)
class ScoreSource:
    kind: str  # base | live | checkpoint | ask
    label: str
    path: str = ""


class ScoreSourceScreen(ModalScreen[ScoreSource | None]):
    """Pick the model that scores the pairs."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="score_source.cancel")]
    DEFAULT_CSS = """
    ScoreSourceScreen { align: center middle; background: $background 60%; }
    ScoreSourceScreen OptionList { height: auto; max-height: 20; margin-bottom: 1; }
    """

    def __init__(self, sources: list[ScoreSource]) -> None:
        super().__init__()
        self.sources = sources

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label("Score the pairs with:", id="question")
            yield OptionList(*[Option(s.label, id=str(i)) for i, s in enumerate(self.sources)], id="sources")
            yield Static("enter to score · escape to cancel", classes="hint")

    def on_mount(self) -> None:
        self.query_one("#dialog").styles.width = 100  # wider than the app's dialogs: run names are long

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.sources[int(event.option.id or 0)])

    def action_cancel(self) -> None:
        self.dismiss(None)


# ---------------------------------------------------------------- the screen


class InspectorScreen(Screen):
    HELP_TITLE = "Pair inspector"
    HELP = HELP
    DEFAULT_CSS = """
    InspectorScreen #inspector-summary { height: auto; padding: 0 1; margin-top: 1; }
    InspectorScreen #inspector-search { margin: 0 1; }
    InspectorScreen #inspector-progress-row { height: 1; padding: 0 1; }
    InspectorScreen #inspector-progress-label { width: auto; margin-right: 2; }
    InspectorScreen #pairs {
        height: 1fr; border: round $panel-lighten-2; border-title-style: bold;
        border-subtitle-color: $text-muted;
    }
    InspectorScreen #pairs:focus { border: round $accent; }
    """
    BINDINGS = [
        Binding("slash", "search", "Search", id="inspector.search", tooltip="Filter pairs by text"),
        Binding("c", "score", "Score", id="inspector.score", tooltip="Score every pair with a model"),
        Binding("x", "stop_scoring", "Stop", id="inspector.stop", tooltip="Stop scoring"),
        Binding("m", "sort_margin", "Wrong first", id="inspector.sort_margin", tooltip="Sort by the model's margin, most wrong first"),
        Binding("s", "next_sort", "Sort", id="inspector.sort", tooltip="Sort by the next column"),
        Binding("r", "reverse_sort", "Reverse", id="inspector.reverse", show=False, tooltip="Reverse the sort order"),
        Binding("v", "only_wrong", "Wrong only", id="inspector.only_wrong", tooltip="Show only the pairs the model gets wrong (again: all)"),
        Binding("f", "flag", "Flag", id="inspector.flag", tooltip="Flag or unflag this pair"),
        Binding("w", "save_cleaned", "Save cleaned", id="inspector.save", tooltip="Save the file without the flagged pairs"),
        Binding("t", "model_view", "As the model sees it", id="inspector.model_view", tooltip="The pair decoded from its token ids: chat template and special tokens shown"),
        Binding("e", "toggle_split", "Train/eval", id="inspector.split", show=False, tooltip="Switch between training and eval data"),
        Binding("o", "open_file", "Open file", id="inspector.open", show=False, tooltip="Open another preference file"),
        Binding("escape", "back", "Back", id="inspector.back", tooltip="Close the search, or go back"),
    ]

    def __init__(
        self,
        cfg: RunConfig | None = None,
        *,
        data: str | None = None,
        run: Run | None = None,
        run_dir: str | None = None,
        split: str = "train",
        count_tokens: bool = True,
    ) -> None:
        super().__init__()
        self.run = run
        self.run_dir = run_dir
        self.cfg = cfg if cfg is not None else (run.config if run is not None else None)
        if self.cfg is None and run_dir is not None:
            self.cfg = _run_config(run_dir)
        if self.cfg is None:
            from engine.presets import DEFAULT_PRESET, load_preset

            self.cfg = load_preset(DEFAULT_PRESET)
        self.split = split
        self.explicit_data = data
        self.count_tokens = count_tokens
        self.records: list[Any] = []
        self._tokenizer_cache: Any = None
        self.table_model = PairTable()
        self.data_path: str = ""
        self.load_error = ""
        self.scored_by = ""
        self.score_kind = ""
        self.scoring = False
        self.tokens_ready = False
        self.saved_paths: list[Path] = []
        self._visible: list[PairRow] = []
        self._rendered = 0
        self.score_error = ""

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="inspector-summary")
        yield Input(placeholder="search prompt / chosen / rejected (escape clears)", id="inspector-search")
        with Horizontal(id="inspector-progress-row"):
            yield Static(id="inspector-progress-label")
            yield ProgressBar(total=100, show_eta=True, id="inspector-progress")
        table: DataTable = DataTable(id="pairs", cursor_type="row", zebra_stripes=True)
        yield table
        yield PairView(id="pair-view")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "rlhf-tui"
        self.sub_title = "pair inspector"
        self.query_one("#inspector-search").display = False
        self.query_one("#inspector-progress-row").display = False
        table = self.query_one("#pairs", DataTable)
        for header, key in COLUMNS:
            table.add_column(header, key=key, width=TEXT_WIDTH.get(key))
        path = self.explicit_data or self._config_data(self.split)
        self.load(path)
        self.watch(table, "scroll_y", self._scrolled, init=False)
        table.focus()

    def _scrolled(self, scroll_y: float) -> None:
        """Scrolling (mouse wheel) near the end of the loaded rows loads the next page."""
        table = self.query_one("#pairs", DataTable)
        if self._rendered < len(self._visible) and scroll_y >= table.max_scroll_y - 5:
            self._render_more(self._rendered + PAGE)
            self.update_summary()

    def _config_data(self, split: str) -> str:
        from engine.config import resolve_path

        assert self.cfg is not None
        value = self.cfg.data.train if split == "train" else self.cfg.data.eval
        return resolve_path(self.cfg, value) if value else ""

    # ------------------------------------------------------------------ loading

    def _split_spec(self) -> str:
        """The preset's split (with its slice) for the side shown: data.train_split / data.eval_split."""
        if self.cfg is None:
            return self.split
        return self.cfg.data.train_split if self.split == "train" else self.cfg.data.eval_split

    def _encoder(self, tokenizer: Any) -> Any:
        from engine.chat_format import Encoder
        from engine.config import resolve_path

        assert self.cfg is not None
        d = self.cfg.data
        return Encoder(tokenizer, self.cfg.model.max_length, d.chat_template, resolve_path(self.cfg, d.chat_template_file) if d.chat_template_file else "")

    def load(self, path: str) -> None:
        """Read the pairs of ``path`` (a file or a folder with train/valid.jsonl)."""
        from engine.data import load_records, resolve_data_file

        table = self.query_one("#pairs", DataTable)
        self.scored_by, self.score_kind, self.tokens_ready = "", "", False
        self.table_model = PairTable()
        self.load_error = ""
        if not path:
            self.data_path = ""
            self.load_error = f"this preset has no {'eval' if self.split == 'eval' else 'training'} data (press o to open a file)"
        else:
            try:
                local = Path(path).expanduser()
                file = resolve_data_file(path, self.split) if local.is_dir() and any(local.glob("*.jsonl")) else path
                records = load_records(str(file), "preference", self._split_spec(), columns=self.cfg.data.columns if self.cfg else "")
            except EngineError as err:
                self.data_path = path
                self.load_error = str(err)
            else:
                self.records = records
                self.data_path = str(file)
                self.table_model = PairTable([
                    PairRow(i, r.line, r.where, _as_text(r.prompt), _as_text(r.chosen), _as_text(r.rejected))
                    for i, r in enumerate(records)
                ])
        table.border_title = Path(self.data_path).name if self.data_path else "no data"
        table.border_subtitle = self.data_path
        self.refresh_table()
        if self.table_model.rows and self.count_tokens:
            self.count_tokens_in_background(self.data_path)

    @work(thread=True, exclusive=True, exit_on_error=False, group="inspector-tokens")
    def count_tokens_in_background(self, path: str) -> None:
        from engine.data import encode

        assert self.cfg is not None
        try:
            tokenizer = self._tokenizer()
            enc = self._encoder(tokenizer)
            lengths = []
            for rec in list(self.records):
                if get_current_worker().is_cancelled:
                    return
                pair = encode(enc, rec, "preference")
                lengths.append((len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)))
        except Exception as err:  # noqa: BLE001 - lengths are a nicety: say why they are missing
            self.post_message(ScoringEnded(f"token lengths unavailable: {err}"))
            return
        self.post_message(TokensCounted(lengths, path))

    @on(TokensCounted)
    def _tokens_counted(self, message: TokensCounted) -> None:
        if message.path != self.data_path or len(message.lengths) != len(self.table_model.rows):
            return
        for row, (p, c, r) in zip(self.table_model.rows, message.lengths, strict=True):
            row.prompt_tokens, row.chosen_tokens, row.rejected_tokens = p, c, r
        self.tokens_ready = True
        self.refresh_table()

    # ------------------------------------------------------------------ drawing

    def refresh_table(self, keep_cursor: bool = True) -> None:
        """Redraw the table from the model. Rows are added a page at a time (``PAGE``): the
        next page is added when the cursor nears the end, so big files stay responsive."""
        table = self.query_one("#pairs", DataTable)
        current = self.current_row() if keep_cursor else None
        table.clear()
        self._visible = self.table_model.visible()
        self._rendered = 0
        at = next((i for i, r in enumerate(self._visible) if current is not None and r.index == current.index), None)
        self._render_more(max(PAGE, (at or 0) + PAGE // 2))
        for header, key in COLUMNS:
            label = header
            if key == self.table_model.sort_key:
                label += " ▼" if self.table_model.reverse else " ▲"
            table.columns[key].label = Text(label, style="bold")  # type: ignore[index]
        table.refresh()
        if at is not None:
            table.move_cursor(row=at)
        self.update_summary()
        self.show_current()

    def _render_more(self, upto: int) -> None:
        table = self.query_one("#pairs", DataTable)
        rows = self._visible[self._rendered : upto]
        for row in rows:
            table.add_row(*self._cells(row), key=str(row.index))
        self._rendered += len(rows)

    def _update_row(self, row: PairRow) -> None:
        table = self.query_one("#pairs", DataTable)
        try:
            table.get_row_index(str(row.index))
        except Exception:  # noqa: BLE001 - not rendered (filtered out or on a later page)
            return
        for (_, key), cell in zip(COLUMNS, self._cells(row), strict=True):
            table.update_cell(str(row.index), key, cell)

    def _cells(self, row: PairRow) -> list[Any]:
        s = row.score
        style = "bold #ffaf00" if row.flagged else ""
        verdict: Text | str = "—"
        if row.verdict is not None:
            verdict = Text(f"{row.verdict:+.3f}", style="#87d75f" if row.prefers else "bold #ff5f5f")
        ok: Text | str = "—" if row.prefers is None else (Text("✓", style="#87d75f") if row.prefers else Text("✗", style="bold #ff5f5f"))
        return [
            Text(str(row.index + 1), style="dim"),
            Text(one_line(row.prompt, TEXT_WIDTH["prompt"]), style=style),
            Text(one_line(row.chosen, TEXT_WIDTH["chosen"]), style="#87d75f"),
            Text(one_line(row.rejected, TEXT_WIDTH["rejected"]), style="#ff8787"),
            _num(row.prompt_tokens),
            _num(row.chosen_tokens),
            _num(row.rejected_tokens),
            Text(fmt_score(s.policy_chosen) if s and self.score_kind != "reward" else "—", justify="right"),
            Text(fmt_score(s.policy_rejected) if s and self.score_kind != "reward" else "—", justify="right"),
            verdict,
            ok,
            Text("⚑", style="bold #ffaf00") if row.flagged else "",
        ]

    def update_summary(self) -> None:
        self.refresh_bindings()  # Stop / Save cleaned depend on the state shown here
        m = self.table_model
        t = Text()
        if self.load_error:
            t.append(self.load_error, style="bold red")
            self.query_one("#inspector-summary", Static).update(t)
            return
        visible = len(m.visible()) if (m.query or m.only_wrong) else len(m.rows)
        t.append(f"{len(m.rows)} pairs", style="bold")
        t.append(f" · {self.split} data" if not self.explicit_data else "", style="dim")
        if m.query:
            t.append(f" · {visible} match ", style="")
            t.append(f"“{m.query}”", style="bold yellow")
        if m.only_wrong:
            t.append(f" · showing only the {visible} judged wrong (v shows all)", style="bold #ff5f5f")
        scored = m.scored
        if scored:
            right = sum(1 for r in scored if r.prefers)
            t.append(" · scored by ", style="dim")
            t.append(self.scored_by, style="bold cyan")
            t.append(f": prefers chosen on {right}/{len(scored)} ({right / len(scored):.1%}) · ")
            t.append(f"{len(scored) - right} wrong", style="bold #ff5f5f" if right < len(scored) else "bold #87d75f")
        elif not self.scoring and not self.score_error:
            t.append(" · not scored (c scores with a model)", style="dim")
        if self.score_error and not self.scoring:
            t.append(f" · scoring failed: {self.score_error}", style="bold red")
        if m.flagged:
            t.append(f" · {len(m.flagged)} flagged", style="bold #ffaf00")
        if self._rendered < len(self._visible):
            t.append(f" · {self._rendered} of {len(self._visible)} rows loaded (more as you move down)", style="dim")
        header = dict(COLUMNS)
        name = next((h for h, k in COLUMNS if k == m.sort_key), header.get("#", "#"))
        t.append(f" · sorted by {name} {'▼' if m.reverse else '▲'}", style="dim")
        self.query_one("#inspector-summary", Static).update(t)

    def current_row(self) -> PairRow | None:
        table = self.query_one("#pairs", DataTable)
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001 - an empty or just-cleared table
            return None
        if key is None:
            return None
        idx = int(key)
        return self.table_model.rows[idx] if 0 <= idx < len(self.table_model.rows) else None

    def show_current(self) -> None:
        row = self.current_row()
        view = self.query_one(PairView)
        if row is None:
            view.show(None)
            return
        view.show(row.as_pair(), row.score, self.score_kind, bool(row.prefers), row.flagged)

    @on(DataTable.RowHighlighted, "#pairs")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.cursor_row >= self._rendered - 10 and self._rendered < len(self._visible):
            self._render_more(self._rendered + PAGE)
            self.update_summary()
        self.show_current()

    @on(DataTable.HeaderSelected, "#pairs")
    def _header(self, event: DataTable.HeaderSelected) -> None:
        self.table_model.sort_by(str(event.column_key.value))
        self.refresh_table()

    # ------------------------------------------------------------------ search / sort

    def action_search(self) -> None:
        box = self.query_one("#inspector-search", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#inspector-search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.table_model.query = event.value
        self.refresh_table()

    @on(Input.Submitted, "#inspector-search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#pairs", DataTable).focus()

    def action_back(self) -> None:
        box = self.query_one("#inspector-search", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.table_model.query = ""
            self.refresh_table()
            self.query_one("#pairs", DataTable).focus()
            return
        if self.scoring:
            self.action_stop_scoring()
        self.app.pop_screen()

    def action_next_sort(self) -> None:
        keys = [k for _, k in COLUMNS]
        nxt = keys[(keys.index(self.table_model.sort_key) + 1) % len(keys)]
        self.table_model.sort_by(nxt, reverse=False)
        self.refresh_table()

    def action_reverse_sort(self) -> None:
        self.table_model.reverse = not self.table_model.reverse
        self.refresh_table()

    def action_sort_margin(self) -> None:
        if not self.table_model.scored:
            self.notify("Score the pairs first (c).", severity="warning")
            return
        self.table_model.sort_by("verdict", reverse=False)
        self.refresh_table(keep_cursor=False)
        self.query_one("#pairs", DataTable).move_cursor(row=0)
        self.show_current()

    def action_only_wrong(self) -> None:
        if not self.table_model.scored:
            self.notify("Score the pairs first (c).", severity="warning")
            return
        self.table_model.only_wrong = not self.table_model.only_wrong
        self.refresh_table()

    # ------------------------------------------------------------------ flags

    def action_flag(self) -> None:
        row = self.current_row()
        if row is None:
            return
        row.flagged = not row.flagged
        table = self.query_one("#pairs", DataTable)
        at = table.cursor_row
        self._update_row(row)
        self.update_summary()
        self.show_current()
        if at + 1 < table.row_count:
            table.move_cursor(row=at + 1)  # flag the next one with one more key press

    def action_save_cleaned(self) -> None:
        from engine.scoring import save_without

        flagged = self.table_model.flagged
        if not flagged:
            self.notify("No pair is flagged (f flags the pair under the cursor).", severity="warning")
            return
        try:
            path, kept = save_without(self.data_path, {r.line for r in flagged})
        except EngineError as err:
            self.notify(str(err), title="Could not save", severity="error")
            return
        self.saved_paths.append(path)
        self.notify(f"{path}\n{kept} pairs kept, {len(flagged)} flagged pairs left out", title="Saved a cleaned copy", timeout=10)

    # ------------------------------------------------------------------ files

    def action_toggle_split(self) -> None:
        if self.explicit_data:
            self.explicit_data = None
        self.split = "eval" if self.split == "train" else "train"
        self.load(self._config_data(self.split))

    def action_open_file(self) -> None:
        from rlhf_tui.screens.dialogs import PromptScreen

        def done(path: str | None) -> None:
            if path:
                self.explicit_data = str(Path(path).expanduser())
                self.load(self.explicit_data)

        self.app.push_screen(PromptScreen("Open a preference file (JSONL/JSON, or a folder with train.jsonl):", value=self.data_path), done)

    # ------------------------------------------------------------------ scoring

    def score_sources(self) -> list[ScoreSource]:
        from engine.rundir import RunDirectory
        from engine.runs_index import list_runs

        assert self.cfg is not None
        out: list[ScoreSource] = []
        live = self.run or getattr(self.app, "active_run", None)
        if live is not None and getattr(live, "ctx", None) is not None:
            out.append(ScoreSource("live", f"Live weights of the run in this app (now at step {live.step})"))
        seen: set[str] = set()
        if self.run_dir:
            for step, path in reversed(RunDirectory(Path(self.run_dir)).checkpoint_dirs()):
                out.append(ScoreSource("checkpoint", f"{Path(self.run_dir).name} · checkpoint step {step}", str(path)))
            seen.add(str(Path(self.run_dir).resolve()))
        for info in list_runs(getattr(self.app, "runs_root", "runs"))[:12]:
            if str(info.path.resolve()) in seen or not info.checkpoints:
                continue
            what = "reward model" if info.algorithm == "reward" else info.algorithm.upper()
            out.append(ScoreSource("checkpoint", f"{info.id} · latest checkpoint (step {info.checkpoints[-1]}) · {what} · {info.status}", str(info.path)))
        out.append(ScoreSource("base", f"Base model only ({self.cfg.model.path}): margins are 0, verdict from its log-probs"))
        out.append(ScoreSource("ask", "Another run directory or checkpoint folder…"))
        return out

    def action_score(self) -> None:
        if self.scoring:
            self.notify("Already scoring (x stops it).", severity="warning")
            return
        if not self.table_model.rows:
            self.notify("No pairs to score.", severity="warning")
            return

        def chosen(source: ScoreSource | None) -> None:
            if source is None:
                return
            if source.kind == "ask":
                from rlhf_tui.screens.dialogs import PromptScreen

                def typed(path: str | None) -> None:
                    if path:
                        self.start_scoring(ScoreSource("checkpoint", path, str(Path(path).expanduser())))

                self.app.push_screen(PromptScreen("Run directory or checkpoint folder:", placeholder="runs/<run id> or runs/<run id>/checkpoints/step-000050"), typed)
                return
            self.start_scoring(source)

        self.app.push_screen(ScoreSourceScreen(self.score_sources()), chosen)

    def start_scoring(self, source: ScoreSource) -> None:
        self.scoring = True
        self.score_error = ""
        self.query_one("#inspector-progress-row").display = True
        self.query_one("#inspector-progress-label", Static).update(Text("loading the model…", style="dim"))
        self.query_one("#inspector-progress", ProgressBar).update(total=None, progress=0)
        self.update_summary()
        self.score_in_background(source, self.data_path)

    @work(thread=True, exclusive=True, exit_on_error=False, group="inspector-scoring")
    def score_in_background(self, source: ScoreSource, path: str) -> None:
        from engine import scoring
        from engine.threads import release_mlx_streams

        worker = get_current_worker()
        try:
            if source.kind == "base":
                assert self.cfg is not None
                scorer = scoring.base_scorer(self.cfg)
            elif source.kind == "live":
                run = self.run or getattr(self.app, "active_run", None)
                scorer = scoring.live_scorer(run)
            else:
                scorer = scoring.checkpoint_scorer(source.path)
            if worker.is_cancelled:
                raise Cancelled()
            self.post_message(ScoringProgressed(0, 0, "reading pairs"))
            pairs = scoring.tokenize_pairs(scorer, path, self.split)
            phase = "scoring" if scorer.kind != "policy" else "scoring (policy, then reference)"

            def progress(done: int, total: int) -> None:
                self.post_message(ScoringProgressed(done, total, phase))

            scores = scoring.score(scorer, pairs, progress=progress, should_stop=lambda: worker.is_cancelled)
            self.post_message(PairsScored(scores, scorer.kind, scorer.label, [scorer.prefers_chosen(s) for s in scores], [scorer.verdict(s) for s in scores], path))
        except Cancelled:
            self.post_message(ScoringEnded(""))
        except Exception as err:  # noqa: BLE001 - shown, the app stays up
            self.post_message(ScoringEnded(str(err) if isinstance(err, EngineError) else f"{type(err).__name__}: {err}"))
        finally:
            release_mlx_streams()

    @on(ScoringProgressed)
    def _progressed(self, message: ScoringProgressed) -> None:
        bar = self.query_one("#inspector-progress", ProgressBar)
        label = self.query_one("#inspector-progress-label", Static)
        if message.total:
            bar.update(total=message.total, progress=message.done)
            label.update(Text(f"{message.phase} {message.done}/{message.total}", style="bold"))
        else:
            label.update(Text(f"{message.phase}…", style="dim"))

    @on(PairsScored)
    def _scored(self, message: PairsScored) -> None:
        self._scoring_done()
        if message.path != self.data_path or len(message.scores) != len(self.table_model.rows):
            return
        for row, s, ok, v in zip(self.table_model.rows, message.scores, message.prefers, message.verdicts, strict=True):
            row.score, row.prefers, row.verdict = s, ok, v
        self.scored_by, self.score_kind = message.label, message.kind
        wrong = sum(1 for ok in message.prefers if not ok)
        self.notify(f"{wrong} of {len(message.scores)} pairs are judged wrong: m sorts them to the top, v shows only them.", title=f"Scored by {message.label}", timeout=8)
        self.refresh_table()

    @on(ScoringEnded)
    def _scoring_ended(self, message: ScoringEnded) -> None:
        if message.error.startswith("token lengths"):
            self.notify(message.error, severity="warning", timeout=6)
            return
        self.score_error = message.error
        self._scoring_done()
        if message.error:
            self.notify(message.error, title="Scoring failed", severity="error", timeout=15)
        else:
            self.notify("Scoring stopped; the table keeps its previous scores.", timeout=4)

    def _scoring_done(self) -> None:
        self.scoring = False
        self.query_one("#inspector-progress-row").display = False
        self.update_summary()

    def _tokenizer(self) -> Any:
        assert self.cfg is not None
        if self._tokenizer_cache is None:
            self._tokenizer_cache = _load_tokenizer(self.cfg)
        return self._tokenizer_cache

    def action_model_view(self) -> None:
        row = self.current_row()
        if row is None or self.cfg is None or row.index >= len(self.records):
            self.notify("no pair under the cursor", severity="warning")
            return
        self.render_model_view(self.records[row.index])

    @work(thread=True, exclusive=True, exit_on_error=False, group="inspector-view")
    def render_model_view(self, record: Any) -> None:
        from engine.data_view import special_ids, view_record

        try:
            tokenizer = self._tokenizer()
            view = view_record(self._encoder(tokenizer), record, "preference", special_ids(tokenizer))
        except EngineError as err:
            self.app.call_from_thread(self.notify, str(err), severity="error")
            return
        self.app.call_from_thread(self.app.push_screen, ModelViewScreen(view))

    def action_stop_scoring(self) -> None:
        if not self.scoring:
            return
        for worker in list(self.app.workers):
            if worker.group == "inspector-scoring":
                worker.cancel()
        self.query_one("#inspector-progress-label", Static).update(Text("stopping after this batch…", style="yellow"))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # keys that cannot do anything now are hidden, so the footer stays readable
        if action == "stop_scoring":
            return self.scoring
        if action == "save_cleaned":
            return bool(self.table_model.flagged)
        if action in ("only_wrong", "sort_margin"):
            return bool(self.table_model.scored)
        return True

    def palette_commands(self) -> list[tuple[str, str, Any]]:
        return [
            ("Inspector: score pairs with a model", "Base model, a checkpoint, a reward model or live weights", self.action_score),
            ("Inspector: sort by margin (wrong first)", "The pairs the model gets wrong at the top", self.action_sort_margin),
            ("Inspector: save cleaned data", "A copy of the file without the flagged pairs", self.action_save_cleaned),
            ("Inspector: open a data file…", "Any preference JSONL/JSON file", self.action_open_file),
        ]


def _num(value: int | None) -> Text:
    return Text("—" if value is None else str(value), justify="right", style="" if value is not None else "dim")


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in value if isinstance(m, dict))
    return str(value)


def _run_config(run_dir: str) -> RunConfig | None:
    from engine.config import config_from_dict, load_toml

    path = Path(run_dir) / "config.toml"
    try:
        return config_from_dict(load_toml(path), source=str(path))
    except EngineError:
        return None


def _load_tokenizer(cfg: RunConfig) -> Any:
    """Only the tokenizer of the config's model (the built-in model is built if missing)."""
    from engine.models import load_tokenizer_for

    return load_tokenizer_for(cfg)


class ModelViewScreen(ModalScreen[None]):
    """One pair decoded from its token ids: prompt, chosen and rejected, special tokens marked."""

    BINDINGS = [Binding("escape,t,q", "close", "Close", id="model_view.close")]
    DEFAULT_CSS = """
    ModelViewScreen { align: center middle; }
    ModelViewScreen #model-view { width: 90%; height: auto; max-height: 85%; border: round $accent; padding: 0 1; background: $panel; }
    """
    STYLES = {"prompt": "cyan", "answer": "green", "special": "bold magenta"}

    def __init__(self, view: Any) -> None:
        super().__init__()
        self.view = view

    def compose(self) -> ComposeResult:
        from textual.containers import VerticalScroll

        v = self.view
        body = Text()
        for key, spans in v.spans.items():
            body.append(f"{key} ({v.tokens[key]} tokens)\n", style="bold dim")
            for span in spans:
                body.append(span.text, style=self.STYLES[span.kind])
            body.append("\n\n")
        body.append("template " + ("applied" if v.templated else "not applied") + f" · shape {v.shape}" + (" · truncated" if v.truncated else ""), style="dim")
        scroll = VerticalScroll(Static(body), id="model-view")
        scroll.border_title = f"{v.where} as the model sees it"
        scroll.border_subtitle = "prompt · answer · special tokens  (esc closes)"
        yield scroll

    def action_close(self) -> None:
        self.dismiss(None)
