"""Chat with a trained run, side by side with its base model (``rlhf-tui chat RUN_DIR``, history ``c``).

Both models answer every prompt; their tokens stream into two panes as they are generated
(engine.side_by_side steps the two ``mlx_lm.stream_generate`` streams in turn in one thread
worker, which only posts messages, batched every 50 ms).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static

SIDES = ("trained", "base")
BATCH_S = 0.05

HELP = """\
Type a prompt and press **enter**: the trained model (left) and its base model (right) both
answer it, streaming token by token, so you see what training changed. Each model keeps its
own conversation (its own earlier answers). The prompt goes through the tokenizer's chat
template when the model has one.

**ctrl+x** stops the answers being generated, **ctrl+l** starts a new conversation,
**escape** goes back. Greedy decoding unless `--temp` was given (`rlhf-tui chat RUN_DIR --temp 0.7`).
"""


class ChatModelsLoaded(Message):
    def __init__(self, labels: dict[str, str], error: str = "") -> None:
        super().__init__()
        self.labels, self.error = labels, error


class AnswersStreamed(Message):
    """New text for each side since the last message; ``finished`` holds sides that ended, with stats."""

    def __init__(self, text: dict[str, str], finished: dict[str, str]) -> None:
        super().__init__()
        self.text, self.finished = text, finished


class AnswersEnded(Message):
    def __init__(self, error: str = "") -> None:
        super().__init__()
        self.error = error


class ChatPane(VerticalScroll):
    """One side's conversation: user turns and that model's answers."""

    def __init__(self, side: str, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.side = side
        self.turns: list[tuple[str, str]] = []  # (role, text)
        self.note = ""

    def compose(self) -> ComposeResult:
        yield Static(classes="chat-text")

    def add_turn(self, role: str, text: str = "") -> None:
        self.turns.append((role, text))
        self.note = ""
        self.redraw()

    def extend_answer(self, text: str) -> None:
        if not self.turns or self.turns[-1][0] != "assistant":
            self.turns.append(("assistant", ""))
        role, old = self.turns[-1]
        self.turns[-1] = (role, old + text)
        self.redraw()

    @property
    def answer(self) -> str:
        return self.turns[-1][1] if self.turns and self.turns[-1][0] == "assistant" else ""

    def clear(self) -> None:
        self.turns.clear()
        self.note = ""
        self.redraw()

    def redraw(self) -> None:
        t = Text()
        for role, text in self.turns:
            if role == "user":
                t.append("you › ", style="bold #5fd7ff")
                t.append(text + "\n", style="#5fd7ff")
            else:
                t.append(text + "\n\n")
        if self.note:
            t.append(self.note, style="dim")
        self.query_one(".chat-text", Static).update(t)
        self.scroll_end(animate=False)


class ChatScreen(Screen):
    HELP_TITLE = "Chat"
    HELP = HELP
    DEFAULT_CSS = """
    ChatScreen #chat-status { height: auto; padding: 0 1; margin-top: 1; }
    ChatScreen #chat-panes { height: 1fr; }
    ChatScreen ChatPane { width: 1fr; border: round $panel-lighten-2; border-title-style: bold; padding: 0 1; }
    ChatScreen #pane-trained { border: round $accent; }
    ChatScreen #chat-input { margin: 0 1; }
    """
    BINDINGS = [
        Binding("ctrl+x", "stop", "Stop", id="chat.stop", tooltip="Stop the answers being generated"),
        Binding("ctrl+l", "new_chat", "New chat", id="chat.new", tooltip="Forget the conversation"),
        Binding("escape", "back", "Back", id="chat.back"),
    ]

    def __init__(self, run_dir: str, step: int | None = None, *, max_tokens: int = 256, temperature: float = 0.0) -> None:
        super().__init__()
        self.run_dir, self.step = run_dir, step
        self.max_tokens, self.temperature = max_tokens, temperature
        self.pair = None  # engine.side_by_side.SideBySide once loaded
        self.conversation = None
        self.loaded = False
        self.generating = False
        self.finished_sides: dict[str, str] = {}
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text(f"loading {Path(self.run_dir).name} and its base model…", style="yellow"), id="chat-status")
        with Horizontal(id="chat-panes"):
            yield ChatPane("trained", id="pane-trained")
            yield ChatPane("base", id="pane-base")
        yield Input(placeholder="a prompt for both models — enter sends", id="chat-input", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "rlhf-tui"
        self.sub_title = f"chat · {Path(self.run_dir).name}"
        self.pane("trained").border_title = "trained"
        self.pane("base").border_title = "base"
        self.load_models()

    def pane(self, side: str) -> ChatPane:
        return self.query_one(f"#pane-{side}", ChatPane)

    # ------------------------------------------------------------------ workers (post messages only)

    @work(thread=True, exclusive=True, exit_on_error=False, group="chat-load")
    def load_models(self) -> None:
        from engine.errors import EngineError
        from engine.side_by_side import SIDES as ENGINE_SIDES
        from engine.side_by_side import Conversation, load_side_by_side
        from engine.threads import release_mlx_streams

        try:
            self.pair = load_side_by_side(self.run_dir, self.step)
            self.conversation = Conversation()
            self.post_message(ChatModelsLoaded({s: self.pair.label(s) for s in ENGINE_SIDES}))
        except (EngineError, OSError, ValueError) as err:
            self.post_message(ChatModelsLoaded({}, str(err)))
        except Exception as err:  # noqa: BLE001 - shown on the screen; the app stays up
            self.post_message(ChatModelsLoaded({}, f"{type(err).__name__}: {err}"))
        finally:
            release_mlx_streams()

    @work(thread=True, exclusive=True, exit_on_error=False, group="chat-generate")
    def answer(self) -> None:
        from engine.side_by_side import stream_side_by_side
        from engine.threads import release_mlx_streams

        pending: dict[str, str] = {}
        finished: dict[str, str] = {}
        last = time.monotonic()
        try:
            for piece in stream_side_by_side(self.pair, self.conversation, max_tokens=self.max_tokens,
                                             temperature=self.temperature, cancelled=self._stop.is_set):
                pending[piece.side] = pending.get(piece.side, "") + piece.text
                if piece.done:
                    finished[piece.side] = f"{piece.tokens} tokens · {piece.tokens_per_sec:,.0f} tok/s · {piece.finish_reason or 'stopped'}"
                now = time.monotonic()
                if piece.done or now - last >= BATCH_S:
                    self.post_message(AnswersStreamed(pending, finished))
                    pending, finished, last = {}, {}, now
            if pending or finished:
                self.post_message(AnswersStreamed(pending, finished))
            self.post_message(AnswersEnded())
        except Exception as err:  # noqa: BLE001
            self.post_message(AnswersEnded(f"{type(err).__name__}: {err}"))
        finally:
            release_mlx_streams()

    # ------------------------------------------------------------------ handlers (UI thread)

    def on_chat_models_loaded(self, message: ChatModelsLoaded) -> None:
        status = self.query_one("#chat-status", Static)
        if message.error:
            status.update(Text(f"cannot chat with this run: {message.error}", style="bold red"))
            return
        self.loaded = True
        for side in SIDES:
            self.pane(side).border_title = message.labels[side]
        how = "greedy" if self.temperature == 0 else f"temperature {self.temperature:g}"
        status.update(Text.assemble(("ready", "bold #5fd7af"), (f" · {how}, up to {self.max_tokens} tokens per answer · the left pane is the trained model, the right its base", "dim")))
        box = self.query_one("#chat-input", Input)
        box.disabled = False
        box.focus()

    @on(Input.Submitted, "#chat-input")
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text or not self.loaded:
            return
        if self.generating:
            self.notify("Both models are still answering; ctrl+x stops them.", severity="warning")
            return
        event.input.value = ""
        self.send(text)

    def send(self, text: str) -> None:
        """Ask both models ``text`` (what enter does)."""
        self.conversation.add_user(text)
        for side in SIDES:
            self.pane(side).add_turn("user", text)
            self.pane(side).add_turn("assistant", "")
        self.generating = True
        self.finished_sides = {}
        self._stop.clear()
        self.answer()

    def on_answers_streamed(self, message: AnswersStreamed) -> None:
        for side, text in message.text.items():
            if text:
                self.pane(side).extend_answer(text)
        for side, stats in message.finished.items():
            self.finished_sides[side] = stats
            pane = self.pane(side)
            pane.note = stats
            pane.redraw()

    def on_answers_ended(self, message: AnswersEnded) -> None:
        self.generating = False
        for side in SIDES:
            if side not in self.finished_sides:
                self.pane(side).note = "stopped"
                self.pane(side).redraw()
        if message.error:
            self.notify(message.error, title="Generation failed", severity="error", timeout=10)

    # ------------------------------------------------------------------ actions

    def action_stop(self) -> None:
        if self.generating:
            self._stop.set()

    def action_new_chat(self) -> None:
        if self.generating:
            self.notify("Stop the answers first (ctrl+x).", severity="warning")
            return
        if self.conversation is not None:
            self.conversation.clear()
        for side in SIDES:
            self.pane(side).clear()

    def action_back(self) -> None:
        self._stop.set()
        if len(self.app.screen_stack) <= 2:  # opened by `rlhf-tui chat`: nothing to go back to
            self.app.exit()
        else:
            self.app.pop_screen()
