"""Fusing a run from the run history: a dialog with progress while engine.fuse works in a thread."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Label, ProgressBar, Static


class FuseProgressed(Message):
    """engine.fuse reached a phase (posted from the fusing thread)."""

    def __init__(self, phase: str, done: int, total: int) -> None:
        super().__init__()
        self.phase, self.done, self.total = phase, done, total


class FuseFinished(Message):
    def __init__(self, out: str, error: str = "") -> None:
        super().__init__()
        self.out, self.error = out, error


def default_fuse_dir(run_dir: str | Path) -> Path:
    """``<run dir>-fused`` beside the run (not a run directory: no config.toml)."""
    p = Path(run_dir)
    return p.parent / f"{p.name}-fused"


class FuseScreen(ModalScreen[str | None]):
    """Fuse ``run_dir`` into ``out`` with progress; dismisses with the folder (or None)."""

    BINDINGS = [Binding("escape", "close", "Close", id="fuse.close")]
    DEFAULT_CSS = """
    FuseScreen { align: center middle; }
    FuseScreen #fuse-dialog { width: 80; height: auto; border: round $accent; padding: 1 2; background: $surface; }
    FuseScreen #fuse-bar { margin: 1 0; }
    """

    def __init__(self, run_dir: str, out: str, step: int | None = None) -> None:
        super().__init__()
        self.run_dir, self.out, self.step = run_dir, out, step
        self.result: str | None = None
        self.finished = False

    def compose(self) -> ComposeResult:
        with Vertical(id="fuse-dialog"):
            yield Label(f"Fusing {Path(self.run_dir).name} into {self.out}", id="fuse-title")
            yield ProgressBar(total=4, show_eta=False, id="fuse-bar")
            yield Static("loading base model…", id="fuse-status")

    def on_mount(self) -> None:
        self.fuse()

    @work(thread=True, exclusive=True, exit_on_error=False, group="fuse")
    def fuse(self) -> None:
        from engine.errors import EngineError
        from engine.fuse import fuse_run
        from engine.threads import release_mlx_streams

        try:
            out = fuse_run(self.run_dir, self.out, step=self.step, progress=lambda p, d, t: self.post_message(FuseProgressed(p, d, t)))
            self.post_message(FuseFinished(str(out)))
        except (EngineError, OSError, ValueError) as err:
            self.post_message(FuseFinished(self.out, str(err)))
        except Exception as err:  # noqa: BLE001 - shown in the dialog; the app stays up
            self.post_message(FuseFinished(self.out, f"{type(err).__name__}: {err}"))
        finally:
            release_mlx_streams()

    def on_fuse_progressed(self, message: FuseProgressed) -> None:
        bar = self.query_one("#fuse-bar", ProgressBar)
        bar.update(total=message.total, progress=message.done)
        self.query_one("#fuse-status", Static).update(f"{message.phase}…")

    def on_fuse_finished(self, message: FuseFinished) -> None:
        self.finished = True
        status = self.query_one("#fuse-status", Static)
        if message.error:
            status.update(f"[b red]Fuse failed:[/] {message.error}\n[dim]escape closes[/]")
            return
        self.result = message.out
        self.query_one("#fuse-bar", ProgressBar).update(progress=4, total=4)
        status.update(f"[b]Done:[/] {message.out}\nmlx_lm.load({message.out!r}) uses it as it is.\n[dim]escape closes[/]")
        self.app.notify(message.out, title="Fused model written", timeout=10)

    def action_close(self) -> None:
        if not self.finished:
            self.app.notify("Fusing continues in the background; the folder is written when it ends.", timeout=5)
        self.dismiss(self.result)
