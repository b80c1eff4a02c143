"""Engine -> console: engine events and run directories become batched messages.

:class:`RunBridge` is subscribed to an in-app :class:`engine.run.Run`. Its ``__call__`` runs
on the engine thread and only appends to a buffer; a small flusher thread posts the buffer
as one :class:`RunEventsArrived` at most every ``interval`` seconds (terminal events are
flushed at once), so a fast run cannot flood the UI.

:class:`RunDirectoryFollower` tails the files another process writes (``metrics.jsonl``,
``events.log``, ``summary.json``) and turns them into the same events, so the monitor
cannot tell a followed run from an in-app one.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.message import Message

from engine import events as ev
from engine.rundir import JsonlTail, RunDirectory
from rlhf_tui.messages import FollowFailed, RunEventsArrived

Post = Callable[[Message], Any]

_EVENT_TYPES: dict[str, type[ev.Event]] = {
    cls.__name__: cls
    for cls in (
        ev.RunStarted,
        ev.PhaseChanged,
        ev.StepMetrics,
        ev.EvalMetrics,
        ev.LogLine,
        ev.Sample,
        ev.CheckpointSaved,
        ev.RunPaused,
        ev.RunResumed,
        ev.Alert,
        ev.RunFinished,
        ev.RunCancelled,
        ev.RunFailed,
    )
}


def event_from_dict(row: dict[str, Any]) -> ev.Event | None:
    """An ``events.log`` line back into its Event (unknown kinds and bad rows give None)."""
    cls = _EVENT_TYPES.get(str(row.get("event", "")))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in row.items() if k in names})
    except TypeError:
        return None


def event_from_metrics_row(row: dict[str, Any]) -> ev.Event | None:
    """A ``metrics.jsonl`` row: eval rows (``eval/`` keys) and step rows."""
    try:
        step = int(row.get("step", 0))
    except (TypeError, ValueError):
        return None
    if any(k.startswith("eval/") for k in row):
        return ev.EvalMetrics(step, row)
    return ev.StepMetrics(step, row)


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
    """Polls a run directory another process writes; posts new events as they appear."""

    def __init__(self, run_dir: str | Path, post: Post, interval: float = 0.25) -> None:
        self.directory = RunDirectory(Path(run_dir))
        self._post = post
        self.interval = interval
        self._metrics = JsonlTail(self.directory.metrics_path)
        self._events = JsonlTail(self.directory.events_path)
        self._stopped = threading.Event()
        self._ended = False
        self._quiet_polls_with_summary = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rlhf-tui-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    @property
    def ended(self) -> bool:
        return self._ended

    def _loop(self) -> None:
        try:
            while not self._stopped.is_set() and not self._ended:
                self.poll()
                self._stopped.wait(self.interval)
        except Exception as err:  # noqa: BLE001 - shown in the monitor, the app stays up
            self._post(FollowFailed(f"{self.directory.path}: {type(err).__name__}: {err}"))

    def poll(self) -> list[ev.Event]:
        """Read what was appended since the last poll, post it, and return it."""
        out: list[ev.Event] = []
        for row in self._events.read_new():
            e = event_from_dict(row)
            if e is not None and not isinstance(e, ev.StepMetrics | ev.EvalMetrics):
                out.append(e)
        metrics = [e for e in map(event_from_metrics_row, self._metrics.read_new()) if e is not None]
        terminal = [e for e in out if isinstance(e, ev.TERMINAL_EVENTS)]
        out = [e for e in out if not isinstance(e, ev.TERMINAL_EVENTS)]
        # RunStarted (events.log) before metric rows; the terminal event always last
        out = out + metrics + terminal
        if not terminal and not out:
            summary = self.directory.read_summary()
            if summary and summary.get("status") in ("completed", "cancelled", "failed"):
                # a writer that died after its summary (or an old run without the event)
                self._quiet_polls_with_summary += 1
                if self._quiet_polls_with_summary >= 2:
                    out.append(_terminal_from_summary(summary))
        if any(isinstance(e, ev.TERMINAL_EVENTS) for e in out):
            self._ended = True
        if out:
            self._post(RunEventsArrived(tuple(out)))
        return out


def _terminal_from_summary(summary: dict[str, Any]) -> ev.Event:
    status = summary.get("status")
    if status == "completed":
        return ev.RunFinished(summary)
    if status == "cancelled":
        return ev.RunCancelled(summary)
    return ev.RunFailed(str(summary.get("error", "the run failed")), "", summary, bad_input=True)
