"""Chosen and rejected answers side by side, with their differences highlighted."""

from __future__ import annotations

import difflib
import re

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from engine.scoring import PairScore

CHOSEN_STYLE = "bold #87ff87 on #0a3a0a"
REJECTED_STYLE = "bold #ff8787 on #3a0a0a"
_WORDS = re.compile(r"\s+|[^\s]+")


def _tokens(text: str) -> list[str]:
    """Words and the whitespace between them; a text without spaces is compared by characters."""
    parts = _WORDS.findall(text)
    return parts if len([p for p in parts if not p.isspace()]) > 1 else list(text)


def diff_texts(chosen: str, rejected: str) -> tuple[Text, Text]:
    """Both answers as rich Text, with what differs from the other one highlighted."""
    a, b = _tokens(chosen), _tokens(rejected)
    if (len(a) == len(chosen)) != (len(b) == len(rejected)):  # one split by chars: compare both by chars
        a, b = list(chosen), list(rejected)
    left, right = Text(), Text()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        ta, tb = "".join(a[i1:i2]), "".join(b[j1:j2])
        if op == "equal":
            left.append(ta)
            right.append(tb)
        else:
            if ta:
                left.append(ta, style="" if ta.isspace() else CHOSEN_STYLE)
            if tb:
                right.append(tb, style="" if tb.isspace() else REJECTED_STYLE)
    return left, right


def similarity(chosen: str, rejected: str) -> float:
    """How alike the two answers are, 0..1 (difflib's ratio over the same tokens as the view)."""
    return difflib.SequenceMatcher(None, _tokens(chosen), _tokens(rejected), autojunk=False).ratio()


def fmt_score(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def score_text(score: PairScore, kind: str, prefers: bool) -> Text:
    """One or two lines on what the model thinks of the pair."""
    t = Text()
    if kind == "reward":
        t.append("reward model  ", style="dim")
        t.append(f"chosen {fmt_score(score.rm_chosen, True)}  rejected {fmt_score(score.rm_rejected, True)}  ")
        t.append(f"margin {fmt_score(score.rm_margin, True)}", style="bold")
    else:
        t.append("policy log p  ", style="dim")
        t.append(f"chosen {score.policy_chosen:.3f}  rejected {score.policy_rejected:.3f}  ")
        if kind != "base":
            t.append("· reference  ", style="dim")
            t.append(f"chosen {score.ref_chosen:.3f}  rejected {score.ref_rejected:.3f}\n")
            t.append("implicit reward  ", style="dim")
            t.append(f"chosen {score.chosen_reward:+.3f}  rejected {score.rejected_reward:+.3f}  ")
            t.append(f"margin {score.margin:+.3f}", style="bold")
            t.append(f"  (beta {score.beta:g})", style="dim")
    t.append("   ")
    t.append(" prefers chosen ✓ " if prefers else " prefers rejected ✗ ", style="black on #87d75f" if prefers else "white on #d70000")
    return t


class PairView(Vertical):
    """The pair under the table's cursor: prompt, both answers, and the model's verdict."""

    DEFAULT_CSS = """
    PairView { height: auto; max-height: 50%; }
    PairView > #pair-prompt { height: auto; max-height: 6; padding: 0 1; color: $text; }
    PairView > #pair-score { height: auto; padding: 0 1; }
    PairView > Horizontal { height: auto; max-height: 14; }
    PairView .answer {
        width: 1fr; height: auto; max-height: 14; overflow-y: auto;
        border: round $panel-lighten-2; border-title-style: bold; padding: 0 1;
    }
    PairView #pair-chosen { border: round #2f7f2f; }
    PairView #pair-rejected { border: round #8f2f2f; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="pair-prompt")
        with Horizontal():
            yield Static(id="pair-chosen", classes="answer")
            yield Static(id="pair-rejected", classes="answer")
        yield Static(id="pair-score")

    def on_mount(self) -> None:
        self.show(None)

    def show(self, pair: dict | None, score: PairScore | None = None, kind: str = "", prefers: bool = False, flagged: bool = False) -> None:
        """``pair``: prompt, chosen, rejected, where; ``score`` when the pair was scored."""
        prompt = self.query_one("#pair-prompt", Static)
        chosen = self.query_one("#pair-chosen", Static)
        rejected = self.query_one("#pair-rejected", Static)
        verdict = self.query_one("#pair-score", Static)
        if pair is None:
            prompt.update(Text("no pair selected", style="dim"))
            chosen.update("")
            rejected.update("")
            verdict.update("")
            return
        head = Text()
        head.append("prompt ", style="bold")
        head.append(f"({pair['where']})", style="dim")
        if flagged:
            head.append("  ⚑ flagged", style="bold #ffaf00")
        head.append("\n")
        head.append(pair["prompt"].rstrip("\n"))
        prompt.update(head)
        left, right = diff_texts(pair["chosen"], pair["rejected"])
        chosen.update(left)
        rejected.update(right)
        chosen.border_title = "chosen"
        rejected.border_title = "rejected"
        sim = similarity(pair["chosen"], pair["rejected"])
        chosen.border_subtitle = f"{sim:.0%} alike"
        if score is None:
            verdict.update(Text("not scored yet: press c to score the pairs with a model", style="dim"))
        else:
            verdict.update(score_text(score, kind, prefers))
