"""Small modal dialogs: confirm, help, text prompt."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.markdown import Markdown as RichMarkdown
from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Input, Label, Static


class ConfirmScreen(ModalScreen[bool]):
    """Ask a yes/no question; dismisses with True for yes."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str, detail: str = "", yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.question, self.detail, self.yes, self.no = question, detail, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.question, id="question")
            if self.detail:
                yield Static(self.detail, id="detail")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button(f"{self.no} (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PromptScreen(ModalScreen[str | None]):
    """Ask for one line of text; dismisses with it, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="prompt.cancel")]

    def __init__(self, question: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.question, self.value, self.placeholder = question, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.question, id="question")
            yield Input(self.value, placeholder=self.placeholder, id="answer")
            yield Static("enter to accept · escape to cancel", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if text:
            self.dismiss(text)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """``?``: what this screen is for and every key it answers to."""

    BINDINGS = [Binding("escape,question_mark,q,f1", "close", "Close", id="help.close")]

    def __init__(self, for_screen: Screen) -> None:
        super().__init__()
        self.for_screen = for_screen
        # taken now: once this dialog is on top, the screen below has no active bindings
        # (widgets' own keys, like a log's scrolling, are left out)
        self.bindings = [(k, a.binding) for k, a in for_screen.active_bindings.items() if isinstance(a.node, Screen | App)]

    def compose(self) -> ComposeResult:
        screen = self.for_screen
        title = getattr(screen, "HELP_TITLE", screen.__class__.__name__)
        text = getattr(screen, "HELP", "")
        rows: list[tuple[str, str]] = []
        seen: set[str] = set()
        for _key, b in self.bindings:
            if not b.description or b.description in seen:
                continue
            seen.add(b.description)
            rows.append((self.app.get_key_display(b), b.description + (f" — {b.tooltip}" if b.tooltip else "")))
        keys = Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False, pad_edge=False)
        keys.add_column("key", style="bold #ffaf00", no_wrap=True)
        keys.add_column("does", ratio=1)
        for row in rows:
            keys.add_row(*row)
        # one Static of rich renderables: Textual's Markdown widget builds a widget per
        # block and per table cell, which took ~0.4 s to open while a run trained
        self.help_text = "\n".join([title, *(f"{k} {does}" for k, does in rows), text])
        body = Group(Text(title, style="bold", justify="center"), Text(), keys, Text(), RichMarkdown(text))
        with VerticalScroll(id="help-dialog", classes="dialog"):
            yield Static(body, id="help-body")
            yield Static("escape, ? or F1 closes this help · ctrl+p opens the command palette", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)
