"""Messages the console passes around, each named for a fact that already happened.

The engine thread (through :mod:`rlhf_tui.bridge`) only ever posts these; widgets are
touched on the UI thread by their handlers.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from engine import events as ev


@dataclass
class RunEventsArrived(Message):
    """A batch of engine events (from an in-app Run or a followed run directory)."""

    events: tuple[ev.Event, ...]


@dataclass
class RunEnded(Message):
    """The run being shown completed, was cancelled or failed (its terminal event)."""

    status: str
    summary: dict


@dataclass
class FollowFailed(Message):
    """Reading a followed run directory failed (unreadable folder, deleted files)."""

    error: str
