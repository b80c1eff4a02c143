"""The Textual console: app class, factory and the two entry points the CLI calls.

Screens live in ``rlhf_tui/screens/`` (one module each). To add one: write the module,
add a ``show_<name>`` method or a palette command here, and one Binding on the screen
that opens it. Every Binding has an ``id`` so it can be remapped with ``set_keymap``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from engine.presets import DEFAULT_PRESET
from rlhf_tui import heap
from rlhf_tui.screens.dialogs import ConfirmScreen, HelpScreen

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.run import Run


class RlhfApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "rlhf-tui"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    BINDINGS = [
        Binding("ctrl+q", "request_quit", "Quit", id="app.quit", priority=True, tooltip="Quit (asks first while a run trains)"),
        Binding("question_mark,f1", "help", "Help", id="app.help", tooltip="Help for this screen (f1 also works while typing in a field)"),
        # shown at the footer's right edge by Textual itself
        Binding("ctrl+p", "command_palette", "Commands", id="app.palette", show=False, tooltip="Command palette"),
    ]

    def __init__(
        self,
        preset: str = DEFAULT_PRESET,
        *,
        overrides: list[str] | None = None,
        runs_root: str = "runs",
        start: bool = False,
        follow_dir: str | None = None,
        initial_screen: Screen | None = None,
        keymap: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if keymap:
            self.set_keymap(keymap)  # the user's keymap.toml (rlhf_tui.keymap)
        self.preset = preset
        self.overrides = list(overrides or [])
        self.runs_root = runs_root
        self.start_at_once = start
        self.follow_dir = follow_dir
        self.initial_screen = initial_screen
        self.active_run: Run | None = None
        self.exit_code = 0

    def on_mount(self) -> None:
        heap.settle(collect=True)  # imports done: keep them out of every later full collection
        if self.initial_screen is not None:
            self.push_screen(self.initial_screen)
        elif self.follow_dir is not None:
            self.follow_run_dir(self.follow_dir)
        else:
            self.show_presets()
            if self.start_at_once:
                from engine.presets import load_preset

                self.start_run(load_preset(self.preset, self.overrides))

    # ------------------------------------------------------------------ navigation

    def _return_to(self, kind: type) -> bool:
        """Pop back to an open screen of ``kind`` and reload it; False when none is open."""
        for i, screen in enumerate(self.screen_stack):
            if isinstance(screen, kind):
                while len(self.screen_stack) > i + 1:
                    self.pop_screen()
                screen.reload()
                return True
        return False

    def show_presets(self) -> None:
        from rlhf_tui.screens.presets import PresetsScreen

        if not self._return_to(PresetsScreen):
            self.push_screen(PresetsScreen(self.preset, self.overrides))

    def start_run(self, cfg: RunConfig, out_dir: str | None = None, *, overwrite: bool = False) -> None:
        """Start training ``cfg`` in a background thread and open its monitor.

        An ``out_dir`` that already holds a run is replaced only after the user confirms."""
        from engine.run import Run
        from engine.rundir import RunDirectory
        from rlhf_tui.screens.monitor import MonitorScreen

        if self.active_run is not None and self.active_run.running:
            self.notify("A run is already training; cancel it first.", severity="warning")
            return
        what = RunDirectory(out_dir).run_description() if out_dir and not overwrite else None
        if what is not None:

            def answered(yes: bool | None) -> None:
                if yes:
                    self.start_run(cfg, out_dir, overwrite=True)

            self.push_screen(
                ConfirmScreen(
                    f"{out_dir} already holds a run. Replace it?",
                    f"It holds {what}. Replacing deletes that run's metrics, checkpoints and weights "
                    f"(other files stay). To continue it instead, resume it from the history (h) "
                    f"or run: rlhf-tui resume {out_dir}",
                    yes="Replace it",
                    no="Keep it",
                ),
                answered,
            )
            return
        run = Run(cfg, runs_root=self.runs_root, out_dir=out_dir, overwrite=overwrite)
        self.active_run = run
        self.push_screen(MonitorScreen(run=run, title=f"{cfg.name} · {cfg.algorithm.upper()}"))

    def show_labelling(self, cfg: RunConfig | None = None) -> None:
        """The labelling screen (back to it if open), for ``cfg``'s model (default: the built-in)."""
        from rlhf_tui.screens.labelling import LabellingScreen, labelling_screen_for

        for i, screen in enumerate(self.screen_stack):
            if isinstance(screen, LabellingScreen):
                while len(self.screen_stack) > i + 1:
                    self.pop_screen()
                return
        if cfg is None:
            from engine.errors import EngineError
            from engine.presets import load_preset

            try:
                cfg = load_preset(self.preset, self.overrides)
            except EngineError:
                cfg = None
        self.push_screen(labelling_screen_for(cfg))

    def follow_run_dir(self, run_dir: str) -> None:
        from rlhf_tui.screens.monitor import MonitorScreen

        path = Path(run_dir).expanduser()
        if not path.is_dir():
            self.notify(f"{path}: run directory not found", severity="error")
            return
        self.push_screen(MonitorScreen(run_dir=str(path), title=f"following {path.name}"))

    # ------------------------------------------------------------------ inspector, history, samples

    def show_inspector(self, cfg: RunConfig | None = None, *, data: str | None = None, run: Run | None = None, run_dir: str | None = None) -> None:
        """The pair inspector on a preset's data (``cfg``), a run's, or any file (``data``)."""
        from rlhf_tui.screens.inspector import InspectorScreen

        self.push_screen(InspectorScreen(cfg, data=data, run=run, run_dir=run_dir))

    def show_history(self) -> None:
        """Every run in the runs folder: reopen, overlay, compare configs, resume, export."""
        from rlhf_tui.screens.history import HistoryScreen

        if not self._return_to(HistoryScreen):
            self.push_screen(HistoryScreen(self.runs_root))

    def show_samples(self, run: Run | None = None, run_dir: str | None = None) -> None:
        """PPO/GRPO samples (prompt, completion, score, advantage), live or from a run directory."""
        from rlhf_tui.screens.samples import SamplesScreen

        self.push_screen(SamplesScreen(run=run, run_dir=run_dir))

    def resume_run_dir(self, run_dir: str) -> None:
        """Continue a stopped run from its last checkpoint, training in this app, in the monitor."""
        from engine.errors import EngineError
        from engine.run import resume_run
        from rlhf_tui.screens.monitor import MonitorScreen

        if self.active_run is not None and self.active_run.running:
            self.notify("A run is already training; cancel it first.", severity="warning")
            return
        try:
            run = resume_run(run_dir)
        except EngineError as err:
            self.notify(str(err), title="Cannot resume", severity="error")
            return
        self.active_run = run
        self.push_screen(MonitorScreen(run=run, title=f"{run.config.name} · {run.config.algorithm.upper()} · resumed"))

    def _screen_run(self) -> tuple[Run | None, str | None]:
        """The run the current screen shows (an in-app Run, or a run directory), if any."""
        from engine.run import Run

        run = getattr(self.screen, "run", None)
        run = run if isinstance(run, Run) else None
        run_dir = getattr(self.screen, "run_dir", None)
        if run is not None and run.directory is not None:
            run_dir = str(run.directory.path)
        return run, run_dir if isinstance(run_dir, str) else None

    def action_inspect(self) -> None:
        """``i``: the pair inspector on what the current screen shows (a preset or a run)."""
        run, run_dir = self._screen_run()
        cfg = getattr(self.screen, "current_config", None)
        if run is None and run_dir is None and cfg is None and hasattr(self.screen, "current_config"):
            self.notify("This preset has an error; fix its file first.", severity="error")
            return
        self.show_inspector(cfg, run=run, run_dir=run_dir)

    def action_history(self) -> None:
        """``h``: the run history."""
        self.show_history()

    def _palette_samples(self) -> None:
        run, run_dir = self._screen_run()
        if run is None and run_dir is None:
            from rlhf_tui.screens.dialogs import PromptScreen

            def done(path: str | None) -> None:
                if path:
                    self.show_samples(run_dir=str(Path(path).expanduser()))

            self.push_screen(PromptScreen("Samples of which run directory?", placeholder="runs/<run id>"), done)
            return
        self.show_samples(run=run, run_dir=run_dir)

    # ------------------------------------------------------------------ app-wide actions

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.screen))

    def action_request_quit(self) -> None:
        run = self.active_run
        if run is None or not run.running:
            self.exit(self.exit_code)
            return
        if isinstance(self.screen, ConfirmScreen):
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.notify("Cancelling the run and writing a checkpoint…", title="Quitting")
                self._cancel_then_exit()

        self.push_screen(
            ConfirmScreen(
                "A run is training. Cancel it and quit?",
                f"It stops after the current step (step {run.step}) and writes a checkpoint you can resume.",
                yes="Cancel run and quit",
                no="Keep training",
            ),
            done,
        )

    @work(thread=True, exclusive=True, group="quit", exit_on_error=False)
    def _cancel_then_exit(self) -> None:
        run = self.active_run
        if run is not None:
            run.cancel()
            run.join(120)
        self.call_from_thread(self.exit, 130 if run is not None else 0)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        provider = getattr(screen, "palette_commands", None)
        if provider is not None:
            for title, help_text, callback in provider():
                yield SystemCommand(title, help_text, callback)
        yield SystemCommand("Go to presets", "Browse, edit and start presets", self._palette_presets)
        yield SystemCommand("Follow a run directory…", "Monitor a run another process writes", self._palette_follow)
        yield SystemCommand("Pair inspector", "Browse, search and score the preference pairs of this preset or run", self.action_inspect)
        yield SystemCommand("Run history", "Every run: reopen, overlay, diff configs, resume, export", self.action_history)
        yield SystemCommand("Samples (PPO/GRPO)", "Prompts, completions, scores and advantages of a run", self._palette_samples)
        yield SystemCommand("Label completions", "Pick the better of the model's own completions; train on the labels", self.show_labelling)
        yield SystemCommand("Help for this screen", "What this screen does and its keys", self.action_help)
        yield from super().get_system_commands(screen)

    def _palette_presets(self) -> None:
        from rlhf_tui.screens.monitor import MonitorScreen

        if isinstance(self.screen, MonitorScreen):
            self.screen.action_back()
        else:
            self.show_presets()

    def _palette_follow(self) -> None:
        from rlhf_tui.screens.dialogs import PromptScreen

        def done(path: str | None) -> None:
            if path:
                self.follow_run_dir(path)

        self.push_screen(PromptScreen("Follow a run directory:", placeholder="runs/<run id>"), done)

    def on_worker_state_changed(self, event) -> None:  # noqa: ANN001 - textual's Worker.StateChanged
        """Errors from any background worker land here and are shown; the app stays up."""
        from textual.worker import WorkerState

        if event.state == WorkerState.ERROR and event.worker.error is not None:
            err = event.worker.error
            self.notify(f"{type(err).__name__}: {err}", title=f"{event.worker.name} failed", severity="error", timeout=15)


def make_app(
    preset: str = DEFAULT_PRESET,
    *,
    overrides: list[str] | None = None,
    runs_root: str = "runs",
    start: bool = False,
    follow_dir: str | None = None,
    initial_screen: Screen | None = None,
    keymap: dict[str, str] | None = None,
) -> RlhfApp:
    """The app, as the CLI and the tests build it."""
    return RlhfApp(preset, overrides=overrides, runs_root=runs_root, start=start, follow_dir=follow_dir, initial_screen=initial_screen, keymap=keymap)


def run_app(preset: str, start: bool, overrides: list[str], runs_root: str) -> int:
    from rlhf_tui.keymap import load_keymap

    app = make_app(preset, overrides=overrides, runs_root=runs_root, start=start, keymap=load_keymap())
    code = app.run()
    _finish_run(app)
    return int(code or 0)


def run_monitor(run_dir: str) -> int:
    from rlhf_tui.keymap import load_keymap

    app = make_app(follow_dir=run_dir, keymap=load_keymap())
    code = app.run()
    return int(code or 0)


def _finish_run(app: RlhfApp) -> None:
    """A run still going when the app closed (e.g. SIGTERM) is cancelled cleanly."""
    run = app.active_run
    if run is not None and run.running:
        run.cancel()
        run.join(120)
