"""Engine -> console: engine events and run directories become batched messages.

:class:`RunBridge` is subscribed to an in-app :class:`engine.run.Run`. Its ``__call__`` runs
on the engine thread and only appends to a buffer; a small flusher thread posts the buffer
as one :class:`RunEventsArrived` at most every ``interval`` seconds (terminal events are
flushed at once), so a fast run cannot flood the UI.

:class:`RunDirectoryFollower` posts what :class:`engine.run_reader.RunFollower` reads from
the files another process writes (``metrics.jsonl``, ``events.log``, ``summary.json``): the
same events, so the monitor cannot tell a followed run from an in-app one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.message import Message

from engine import events as ev
from engine.run_reader import RunFollower, event_from_dict, event_from_metrics_row
from rlhf_tui.messages import FollowFailed, RunEventsArrived

Post = Callable[[Message], Any]

class RunBridge:
    """Subscribe an instance to a Run: events reach ``post`` in batches, on the UI side."""

    def __init__(self, post: Post, interval: float = 0.1) -> None:
        self._post = post
        self.interval = interval
        self._lock = threading.Lock()
        self._buffer: list[ev.Event] = []
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self.batches_posted = 0
        self.events_seen = 0
        self._thread = threading.Thread(target=self._flush_loop, name="rlhf-tui-bridge", daemon=True)
        self._thread.start()

    def __call__(self, event: ev.Event) -> None:  # engine thread: must return fast
        with self._lock:
            self._buffer.append(event)
            self.events_seen += 1
        if isinstance(event, ev.TERMINAL_EVENTS):
            self._wake.set()

    def _flush_loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self.flush():
                return

    def flush(self) -> bool:
        """Post what is buffered; True once the terminal event went out."""
        with self._lock:
            batch, self._buffer = self._buffer, []
        if not batch:
            return False
        self.batches_posted += 1
        self._post(RunEventsArrived(tuple(batch)))
        if any(isinstance(e, ev.TERMINAL_EVENTS) for e in batch):
            self._stopped.set()
            return True
        return False

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()


class RunDirectoryFollower:
    """Polls a run directory another process writes (engine.run_reader.RunFollower) and posts
    new events as they appear."""

    def __init__(self, run_dir: str | Path, post: Post, interval: float = 0.25) -> None:
        self.follower = RunFollower(run_dir)
        self.directory = self.follower.directory
        self._post = post
        self.interval = interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rlhf-tui-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    @property
    def ended(self) -> bool:
        return self.follower.ended

    def _loop(self) -> None:
        try:
            while not self._stopped.is_set() and not self.ended:
                self.poll()
                self._stopped.wait(self.interval)
        except Exception as err:  # noqa: BLE001 - shown in the monitor, the app stays up
            self._post(FollowFailed(f"{self.directory.path}: {type(err).__name__}: {err}"))

    def poll(self) -> list[ev.Event]:
        """Read what was appended since the last poll, post it, and return it."""
        out = self.follower.poll()
        if out:
            self._post(RunEventsArrived(tuple(out)))
        return out


__all__ = ["RunBridge", "RunDirectoryFollower", "event_from_dict", "event_from_metrics_row"]
