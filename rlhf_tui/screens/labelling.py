"""The labelling screen: a person picks the better of two completions; the labels train the next round.

Completions are sampled in a background thread (``engine.labelling.CompletionQueue``) that
keeps ``AHEAD`` prompts ready, so the person never waits on the model. Every label is written
to the label file at once (``engine.labels``: one fsync'd line each); quitting and coming back
resumes at the first prompt this labeller has not judged. **r** starts a DPO round on the pairs
collected so far, starting from the weights that wrote them, in the run monitor
(``engine.labelling.round_config`` / ``prepare_round``).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, Label, Static, TextArea

from engine.errors import EngineError
from engine.labelling import (
    CompletionQueue,
    Item,
    LabelStats,
    builtin_prompts,
    default_labeller,
    parse_sampling,
    resolve_labelling_model,
    resume_checkpoint,
    undone_item,
    unlabelled_prompts,
)
from engine.labels import PANES, LabelFile, utc_now
from engine.labels import Label as LabelRecord
from engine.sampling import ModelChoice, Sampling

if TYPE_CHECKING:
    from engine.config import RunConfig

DEFAULT_LABEL_FILE = "labels/labels.jsonl"

HELP = """\
Judge the model's own completions. The prompt is on top, two sampled completions below
(**A** left, **B** right). One key per judgement:

**a** A is better · **b** B is better · **t** tie · **x** both bad · **s** skip. With three or
four completions (**p**, then `n=3` or `n=4`), **a**-**d** pick the best one: each other
completion becomes a pair with it as `rejected`.
**e** rewrites the selected completion (←/→ select it) into a better answer: your text becomes
`chosen`, the model's original `rejected`. **u** undoes your last label.

Labels are appended to the label file as you make them (a crash loses at most the one being
made); pairs go to the file itself, which trains like any preference file (`prompt`/`chosen`/
`rejected` plus provenance); ties, both-bad and skips go to `<file>.skipped.jsonl`. Coming back
later resumes at the first prompt you have not labelled.

**r** trains a DPO round on the pairs collected so far, starting from the weights that wrote
the completions; the run directory keeps a copy of the rows it trained on and
`data_provenance.json`. **m** picks the model: a base model, a run directory (its latest
weights), a checkpoint folder, or `live` (the current weights of the run training in this app,
saved next to the label file so the labels can name them); after a round it offers the new run. **p** changes the
sampling (temperature, top_p, max tokens), **n** the labeller's name, **i** opens the label file
in the pair inspector.

When several labellers share a label file, the bar at the bottom shows how often they agree
(and Cohen's kappa). To label the same pairs a second time (yourself or someone else), start
the palette command *relabel the pairs in this file*: the pairs others judged are shown again,
A/B order shuffled.
"""


@dataclass
class ItemsReady(Message):
    """The generator thread queued new items."""

    generation: int = -1


@dataclass
class GeneratorFailed(Message):
    error: str
    generation: int = -1


@dataclass
class ModelLoaded(Message):
    description: str
    generation: int = -1


class EditScreen(ModalScreen[str | None]):
    """Rewrite a completion; ctrl+s keeps it, escape cancels."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Use this answer", id="edit.save"),
        Binding("escape", "cancel", "Cancel", id="edit.cancel"),
    ]
    DEFAULT_CSS = """
    EditScreen { align: center middle; background: $background 60%; }
    EditScreen #edit-dialog { width: 90; max-width: 95%; height: auto; border: thick $accent; background: $surface; padding: 1 2; }
    EditScreen TextArea { height: 10; }
    """

    def __init__(self, pane: str, prompt: str, text: str) -> None:
        super().__init__()
        self.pane, self.prompt, self.text = pane, prompt, text

    def compose(self) -> ComposeResult:
        with Vertical(id="edit-dialog"):
            yield Label(f"Rewrite completion {self.pane.upper()} into a better answer", id="question")
            yield Static(Text(self.prompt.rstrip("\n"), style="italic"), classes="hint")
            yield TextArea(self.text, id="edit-text", soft_wrap=True)
            yield Static("ctrl+s uses your text as the chosen answer · f7 selects all · escape cancels", classes="hint")

    def on_mount(self) -> None:
        area = self.query_one(TextArea)
        area.focus()
        area.move_cursor(area.document.end)

    def action_save(self) -> None:
        self.dismiss(self.query_one(TextArea).text)

    def action_cancel(self) -> None:
        self.dismiss(None)


class LabellingScreen(Screen):
    HELP_TITLE = "Labelling"
    HELP = HELP
    AUTO_FOCUS = ""
    BINDINGS = [
        Binding("a", "label('a')", "A better", id="labelling.a", tooltip="Completion A is better"),
        Binding("b", "label('b')", "B better", id="labelling.b", tooltip="Completion B is better"),
        Binding("t", "label('tie')", "Tie", id="labelling.tie", tooltip="Equally good (kept aside, not a training pair)"),
        Binding("x", "label('both_bad')", "Both bad", id="labelling.both_bad", tooltip="Neither is acceptable (kept aside)"),
        Binding("s", "label('skip')", "Skip", id="labelling.skip", tooltip="Cannot judge this one"),
        Binding("e", "edit", "Edit", id="labelling.edit", tooltip="Rewrite the selected completion; it becomes chosen"),
        Binding("u", "undo", "Undo", id="labelling.undo", tooltip="Remove your last label and show it again"),
        Binding("c", "label('c')", "C better", id="labelling.c", tooltip="Completion C is the best (when 3 or 4 are shown)"),
        Binding("d", "label('d')", "D better", id="labelling.d", tooltip="Completion D is the best (when 4 are shown)"),
        Binding("left", "select('previous')", "Select left", id="labelling.select_left", show=False),
        Binding("right", "select('next')", "Select right", id="labelling.select_right", show=False),
        Binding("r", "train_round", "Train", id="labelling.train", tooltip="Start a DPO round on the labelled pairs"),
        Binding("m", "choose_model", "Model", id="labelling.model", tooltip="Label completions from another model or checkpoint"),
        Binding("i", "inspect", "Pairs", id="labelling.inspect", show=False, tooltip="Open the label file in the pair inspector"),
        Binding("p", "sampling_settings", "Sampling", id="labelling.sampling", show=False, tooltip="Temperature, top_p and max tokens"),
        Binding("n", "labeller_name", "Labeller", id="labelling.labeller", show=False, tooltip="Who is labelling (resumes that person's place)"),
        Binding("escape", "back", "Back", id="labelling.back", show=False, tooltip="Leave (labels are already saved)"),
    ]
    DEFAULT_CSS = """
    LabellingScreen #label-prompt { height: auto; max-height: 12; border: round $accent; border-title-style: bold; padding: 0 1; }
    LabellingScreen #panes { height: 1fr; }
    LabellingScreen .pane { width: 1fr; height: 1fr; border: round $panel-lighten-2; border-title-style: bold; padding: 0 1; }
    LabellingScreen .pane.-selected { border: round $accent; }
    LabellingScreen .pane Static { width: 1fr; }
    LabellingScreen #label-sampling { height: 1; padding: 0 1; color: $text-muted; }
    LabellingScreen #label-stats { height: 1; padding: 0 1; }
    """

    def __init__(
        self,
        *,
        label_file: str | Path = DEFAULT_LABEL_FILE,
        prompts: str | Path | None = None,
        model: str | ModelChoice = "builtin:tiny-sorter",
        labeller: str | None = None,
        sampling: Sampling | None = None,
        relabel: bool = False,
        max_length: int = 512,
        seed: int = 0,
        clock: Callable[[], str] = utc_now,
        round_steps: int | None = None,
        base_config: RunConfig | None = None,
    ) -> None:
        super().__init__()
        self.labels = LabelFile(label_file, clock=clock)
        self.prompts_path = Path(prompts) if prompts else builtin_prompts()
        self.model_spec = model
        self.labeller = labeller or default_labeller()
        self.sampling = sampling or Sampling()
        self.relabel = relabel
        self.max_length = max_length
        self.seed = seed
        # the completion queue owns the generator thread and all it touches; its callbacks run
        # in that thread, so they only post messages
        self.queue = CompletionQueue(
            on_ready=lambda generation: self.post_message(ItemsReady(generation)),
            on_loaded=lambda description, generation: self.post_message(ModelLoaded(description, generation)),
            on_failed=lambda error, generation: self.post_message(GeneratorFailed(error, generation)),
            seed=seed,
            max_length=max_length,
        )
        self.label_stats = LabelStats(self.labels)  # the file parsed again only when it changes
        self.choice = model if isinstance(model, ModelChoice) else None
        self.selected = "a"
        self.total_prompts = 0
        self._status = "loading model…"
        self.session_count = 0
        self._label_times: deque[float] = deque(maxlen=20)  # monotonic times of recent labels
        self.last_round: str | None = None  # the run directory of the last round started here
        self.round_steps = round_steps  # steps of a training round (None: about 8 epochs, 10-200)
        self.base_config = base_config  # hyperparameters of a round from a base model (default: tiny-dpo's)

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Header()
        prompt = Static("", id="label-prompt-text", markup=False)
        with VerticalScroll(id="label-prompt"):
            yield prompt
        with Horizontal(id="panes"):
            for pane in PANES:
                with VerticalScroll(id=f"pane-{pane}", classes="pane" + (" -selected" if pane == "a" else "")):
                    yield Static("", id=f"text-{pane}", markup=False)
        yield Static("", id="label-sampling", markup=False)
        yield Static("", id="label-stats")
        yield Footer(compact=True)  # every labelling key fits in 80 columns

    def on_mount(self) -> None:
        self.title = "rlhf-tui"
        self.sub_title = f"labelling · {self.labels.path}"
        self.query_one("#label-prompt").border_title = "Prompt"
        for pane in PANES:
            self.query_one(f"#pane-{pane}").border_title = f"{pane.upper()}  ({pane})"
        self._show_panes(self.sampling.n)
        self._resume_model()
        self._refresh_sampling_line()
        self._start()
        self.set_interval(1.0, self._refresh_stats)

    @property
    def current(self) -> Item | None:
        """The item shown."""
        return self.queue.current

    @property
    def choice(self) -> ModelChoice | None:
        """The model writing the completions, once resolved."""
        return self.queue.choice

    @choice.setter
    def choice(self, value: ModelChoice | None) -> None:
        self.queue.choice = value

    def _resume_model(self) -> None:
        """Coming back: label with the weights this labeller last labelled (a later round's
        checkpoint) when they started from the same base model and still exist."""
        if self.relabel or self.choice is not None:
            return
        try:
            checkpoint = resume_checkpoint(self.label_stats.rows(), self.labeller, str(self.model_spec))
        except EngineError:
            return
        if checkpoint:
            self.model_spec = checkpoint
            self.notify(f"Resuming with {checkpoint} (m changes the model).", timeout=6)

    def on_unmount(self) -> None:
        self._stop_generator()  # the thread ends by itself; engine.labelling waits for it at exit

    # ------------------------------------------------------------------ the queue

    def _start(self) -> None:
        """(Re)fill the queue: generated completions, or the pairs of the file when relabelling."""
        self._stop_generator()
        try:
            self.labels.repair()
            rows = self.label_stats.rows()
        except (EngineError, OSError) as err:
            self.queue.clear()
            self._fail(str(err))
            return
        if self.relabel:
            self.queue.start_relabel(rows, self.labeller, seed=self.seed)
            self._status = "nothing left to relabel" if not self.queue.counts().ready else ""
            self._show_next()
            return
        try:
            prompts, self.total_prompts = unlabelled_prompts(self.prompts_path, rows, self.labeller)
        except EngineError as err:
            self.queue.clear()
            self._fail(str(err))
            return
        self._status = "loading model…"
        self.queue.start(prompts, self.choice or str(self.model_spec), self.sampling, resolve=self._resolver())
        self._show_next()

    def _stop_generator(self) -> None:
        self.queue.cancel()

    def _resolver(self) -> Callable[[str], ModelChoice]:
        """Resolves a model spec in the generator thread; ``live`` is the app's training run's
        current weights (saved next to the label file)."""
        run = getattr(self.app, "active_run", None)
        return partial(resolve_labelling_model, label_path=self.labels.path, live_run=run)

    @on(ItemsReady)
    def _items_ready(self) -> None:
        if self.current is None:
            self._show_next()
        self._refresh_stats()

    def _stale(self, message: ItemsReady | ModelLoaded | GeneratorFailed) -> bool:
        """Posted by a queue generation that a refill has since replaced."""
        return message.generation not in (-1, self.queue.generation)

    @on(ModelLoaded)
    def _model_loaded(self, message: ModelLoaded) -> None:
        if self._stale(message):
            return
        self._status = "generating…"
        self._refresh_sampling_line()
        self._refresh_stats()

    @on(GeneratorFailed)
    def _generator_failed(self, message: GeneratorFailed) -> None:
        if not self._stale(message):
            self._fail(message.error)

    def _fail(self, error: str) -> None:
        self._status = f"error: {error}"
        self.notify(error, title="Labelling", severity="error", timeout=15)
        if self.current is None:
            self._show(None)
        self._refresh_stats()

    def _show_next(self) -> None:
        self._show(self.queue.advance())

    def _show(self, item: Item | None) -> None:
        prompt = self.query_one("#label-prompt-text", Static)
        texts = [self.query_one(f"#text-{pane}", Static) for pane in PANES]
        if item is None:
            finished = self.queue.counts().finished
            if finished and not self._status.startswith("error"):
                waiting = "All prompts here are labelled. r trains on the pairs; m picks another model."
            else:
                waiting = self._status or "generating…"
            prompt.update(waiting)
            for widget in texts:
                widget.update("")
        else:
            text = item.prompt if isinstance(item.prompt, str) else json.dumps(item.prompt, ensure_ascii=False, indent=1)
            prompt.update(text.rstrip("\n"))
            for widget, completion in zip(texts, item.completions, strict=False):
                widget.update(completion or "(empty)")
            self._show_panes(len(item.completions))
        self._refresh_stats()

    def _show_panes(self, count: int) -> None:
        """Show panes A.. for ``count`` completions; keys for hidden panes leave the footer."""
        for i, pane in enumerate(PANES):
            self.query_one(f"#pane-{pane}").display = i < count
        if PANES.index(self.selected) >= count:
            self.action_select("a")
        self.refresh_bindings()

    def _pane_count(self) -> int:
        return len(self.current.completions) if self.current is not None else self.sampling.n

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("label", "select") and parameters and parameters[0] in PANES:
            return PANES.index(str(parameters[0])) < self._pane_count()
        return True

    # ------------------------------------------------------------------ status lines

    def _refresh_sampling_line(self) -> None:
        s = self.sampling
        if self.relabel:
            line = f"relabelling the pairs others judged in {self.labels.path.name} (A/B order shuffled) · labeller {self.labeller}"
        else:
            model = self.choice.describe() if self.choice else str(self.model_spec)
            many = f" · {s.n} completions" if s.n > 2 else ""
            line = f"model {model} · temperature {s.temperature:g} · top_p {s.top_p:g} · max tokens {s.max_tokens}{many} · labeller {self.labeller}"
        self.query_one("#label-sampling", Static).update(line)

    def stats_text(self) -> Text:
        summary = self.label_stats.summary()
        out = Text()
        out.append(f"{self.session_count} labelled", style="bold")
        out.append(f" this session · {summary.pairs} pairs + {summary.others} other in file")
        times = self._label_times
        if len(times) >= 2 and times[-1] > times[0]:
            out.append(f" · {60 * (len(times) - 1) / (times[-1] - times[0]):.1f}/min")
        counts = self.queue.counts()
        out.append(f" · {counts.ready} ready" + (f", {counts.pending} to generate" if not self.relabel else ""))
        for ag in summary.agreements:
            if self.labeller in (ag.labeller_a, ag.labeller_b):
                other = ag.labeller_b if ag.labeller_a == self.labeller else ag.labeller_a
                kappa = f", κ {ag.kappa:.2f}" if ag.kappa is not None else ""
                out.append(f" · agree with {other} {100 * (ag.rate or 0):.0f}% of {ag.shared}{kappa}", style="bold")
        if self._status.startswith("error"):
            out.append(f" · {self._status}", style="red")
        return out

    def _refresh_stats(self) -> None:
        try:
            self.query_one("#label-stats", Static).update(self.stats_text())
            if not self.relabel and self.total_prompts:
                left = self.queue.counts().left
                self.query_one("#label-prompt").border_subtitle = f"{max(self.total_prompts - left, 0)} of {self.total_prompts} prompts done by {self.labeller}"
            else:
                self.query_one("#label-prompt").border_subtitle = ""
        except EngineError as err:
            self.query_one("#label-stats", Static).update(Text(str(err), style="red"))

    # ------------------------------------------------------------------ actions

    def _record(self, label: str, **extra: Any) -> None:
        item = self.current
        if item is None:
            self.notify("Nothing to label yet: completions are being generated.", severity="warning")
            return
        record = LabelRecord(
            item.prompt,
            item.completions,
            label,
            self.labeller,
            item.model.base or "unknown",
            item.model.checkpoint,
            self.sampling.provenance() if not self.relabel else {},
            **extra,
        )
        try:
            self.labels.append(record)
        except EngineError as err:
            self.notify(str(err), title="Label not saved", severity="error", timeout=15)
            return
        self.session_count += 1
        self._label_times.append(time.monotonic())
        self._show_next()

    def action_label(self, label: str) -> None:
        self._record(label)

    def action_select(self, pane: str) -> None:
        if pane in ("previous", "next"):
            step = -1 if pane == "previous" else 1
            pane = PANES[(PANES.index(self.selected) + step) % self._pane_count()]
        self.selected = pane
        for p in PANES:
            self.query_one(f"#pane-{p}").set_class(p == pane, "-selected")

    def action_edit(self) -> None:
        item = self.current
        if item is None:
            return
        pane = self.selected
        original = item.completions[PANES.index(pane)]
        prompt = item.prompt if isinstance(item.prompt, str) else json.dumps(item.prompt)

        def done(text: str | None) -> None:
            if text is None or self.current is not item:
                return
            if text == original:
                self.notify(f"Unchanged: press {pane} to pick it as it is.", severity="warning")
                return
            self._record("edit", edited=pane, edit_text=text)

        self.app.push_screen(EditScreen(pane, prompt, original), done)

    def action_undo(self) -> None:
        try:
            row = self.labels.undo(self.labeller)
        except EngineError as err:
            self.notify(str(err), severity="error")
            return
        if row is None:
            self.notify("Nothing of yours to undo in this label file.", severity="warning")
            return
        self.session_count = max(self.session_count - 1, 0)
        model = self.current.model if self.current else (self.choice or ModelChoice("", str(row.get("model", "")), None))
        back = undone_item(row, model)
        self.queue.put_back(back)
        self._show(back)
        self.notify(f"Undid '{row['label']}' on this prompt.", timeout=3)

    def action_back(self) -> None:
        self._stop_generator()
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.app.show_presets()  # type: ignore[attr-defined]

    def action_choose_model(self) -> None:
        from rlhf_tui.screens.dialogs import PromptScreen

        suggestion = self.last_round or (self.choice.spec if self.choice else str(self.model_spec))

        def done(spec: str | None) -> None:
            if spec:
                self.use_model(spec)

        self.app.push_screen(
            PromptScreen("Label completions from (base model, run directory, checkpoint folder, or live):", suggestion, "runs/<id>"),
            done,
        )

    def use_model(self, spec: str | ModelChoice) -> None:
        """Label completions from other weights (the queue is refilled)."""
        self.model_spec = spec
        self.choice = spec if isinstance(spec, ModelChoice) else None
        self.relabel = False
        self._refresh_sampling_line()
        self._start()

    # ------------------------------------------------------------------ close the loop

    def round_config(self, algorithm: str = "dpo") -> RunConfig:
        """The config of a training round on the labelled pairs, from the weights that wrote them."""
        from engine.labelling import round_config
        from engine.sampling import resolve_model_choice

        choice = self.choice or (None if self.relabel else resolve_model_choice(str(self.model_spec)))
        return round_config(self.labels, choice, algorithm=algorithm, base_config=self.base_config, round_steps=self.round_steps)

    def action_train_round(self, algorithm: str = "dpo") -> None:
        from rlhf_tui.screens.dialogs import ConfirmScreen

        try:
            pairs = self.labels.pairs()
        except EngineError as err:
            self.notify(str(err), severity="error")
            return
        if not pairs:
            self.notify("No pairs yet: label some with a, b or e first (ties and skips are not pairs).", severity="warning")
            return
        try:
            cfg = self.round_config(algorithm)
        except EngineError as err:
            self.notify(str(err), title="Cannot start a round", severity="error", timeout=15)
            return
        start = cfg.model.init_from or cfg.model.path

        def done(yes: bool | None) -> None:
            if yes:
                self.start_round(cfg)

        self.app.push_screen(
            ConfirmScreen(
                f"Train {algorithm.upper()} on {len(pairs)} labelled pairs?",
                f"Starting from {start}; {cfg.train.max_steps} steps of {cfg.train.batch_size} pairs, "
                f"learning rate {cfg.train.learning_rate:g}. The run monitor opens; come back here with escape "
                "when it ends, then m labels the new weights.",
                yes="Start training",
                no="Not now",
            ),
            done,
        )

    def start_round(self, cfg: RunConfig) -> Path | None:
        """Copy the pairs into a new run directory, record where they came from, and start training."""
        from engine.labelling import prepare_round

        runs_root = getattr(self.app, "runs_root", "runs")
        active = getattr(self.app, "active_run", None)
        if active is not None and active.running:
            self.notify("A run is already training; let it finish or cancel it first.", severity="warning")
            return None
        try:
            directory = prepare_round(self.labels, cfg, runs_root)
        except EngineError as err:
            self.notify(str(err), title="Cannot start a round", severity="error", timeout=15)
            return None
        self.last_round = str(directory)
        self.app.start_run(cfg, out_dir=str(directory))  # type: ignore[attr-defined]
        return directory

    def action_sampling_settings(self) -> None:
        from rlhf_tui.screens.dialogs import PromptScreen

        s = self.sampling
        current = f"temperature={s.temperature:g} top_p={s.top_p:g} max_tokens={s.max_tokens} n={s.n}"

        def done(text: str | None) -> None:
            if not text:
                return
            try:
                self.sampling = parse_sampling(text, self.sampling)
            except ValueError as err:
                self.notify(str(err), title="Sampling not changed", severity="error")
                return
            self._refresh_sampling_line()
            if not self.relabel:
                self._start()  # completions already queued used the old settings

        self.app.push_screen(PromptScreen("Sampling for new completions:", current, "temperature=0.8 top_p=0.95 max_tokens=32"), done)

    def action_labeller_name(self) -> None:
        from rlhf_tui.screens.dialogs import PromptScreen

        def done(name: str | None) -> None:
            if name and name != self.labeller:
                self.labeller = name
                self.session_count = 0
                self._label_times.clear()
                self._refresh_sampling_line()
                self._start()  # resume where this person stopped

        self.app.push_screen(PromptScreen("Who is labelling?", self.labeller, "your name"), done)

    def action_inspect(self) -> None:
        if not self.labels.path.exists():
            self.notify("No label file yet: label a pair first.", severity="warning")
            return
        self.app.show_inspector(data=str(self.labels.path))  # type: ignore[attr-defined]

    def action_relabel(self) -> None:
        self.relabel = True
        self._refresh_sampling_line()
        self._start()

    def palette_commands(self) -> list[tuple[str, str, Any]]:
        return [
            ("Labelling: sampling settings…", "Temperature, top_p and max tokens of new completions (p)", self.action_sampling_settings),
            ("Labelling: labeller name…", "Who is labelling; resumes that person's place (n)", self.action_labeller_name),
            ("Labelling: inspect the label file", "The pair inspector on the labelled pairs (i)", self.action_inspect),
            ("Labelling: relabel the pairs in this file", "Judge pairs other labellers judged (A/B shuffled) to measure agreement", self.action_relabel),
            ("Labelling: train DPO on the labels", "Start a DPO round on the labelled pairs", self.action_train_round),
            ("Labelling: train a reward model on the labels", "Bradley-Terry reward model on the labelled pairs", lambda: self.action_train_round("reward")),
            ("Labelling: choose the model", "Base model, run directory or checkpoint folder", self.action_choose_model),
        ]


def labelling_screen_for(cfg: RunConfig | None) -> LabellingScreen:
    """A labelling screen for a preset's model: the built-in prompts for the built-in model,
    otherwise the prompts of the preset's training data; labels go to ``labels/<preset>.jsonl``."""
    if cfg is None:
        return LabellingScreen()
    from engine.config import resolve_path

    model = resolve_path(cfg, cfg.model.path)
    prompts = None if model.startswith("builtin:") or not cfg.data.train else resolve_path(cfg, cfg.data.train)
    return LabellingScreen(
        label_file=Path("labels") / f"{cfg.name}.jsonl",
        prompts=prompts,
        model=model,
        max_length=cfg.model.max_length,
        sampling=Sampling(cfg.generation.temperature, cfg.generation.top_p, cfg.generation.max_new_tokens),
        base_config=cfg,
    )
