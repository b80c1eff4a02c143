"""Typed events a Run emits to its subscribers (the console, the CLI, tests).

Events are plain frozen dataclasses with only built-in values, so any thread can read
them and they serialise to ``events.log`` as one JSON object per line.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    time: float = field(default_factory=time.time, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    run_id: str
    run_dir: str
    algorithm: str
    total_steps: int
    start_step: int
    world_size: int
    config: dict[str, Any]


@dataclass(frozen=True)
class PhaseChanged(Event):
    """A long phase (loading, reference log-probs, generation, evaluation) made progress."""

    phase: str
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class StepMetrics(Event):
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class EvalMetrics(Event):
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class LogLine(Event):
    text: str
    level: str = "info"


@dataclass(frozen=True)
class Sample(Event):
    step: int
    prompt: str
    completion: str
    score: float
    advantage: float = 0.0


@dataclass(frozen=True)
class CheckpointSaved(Event):
    step: int
    path: str


@dataclass(frozen=True)
class RunPaused(Event):
    step: int


@dataclass(frozen=True)
class RunResumed(Event):
    step: int


@dataclass(frozen=True)
class Alert(Event):
    """Something the user should look at now (NaN, divergence, skipped step)."""

    step: int
    text: str


@dataclass(frozen=True)
class RunFinished(Event):
    summary: dict[str, Any]


@dataclass(frozen=True)
class RunCancelled(Event):
    summary: dict[str, Any]


@dataclass(frozen=True)
class RunFailed(Event):
    error: str
    traceback: str
    summary: dict[str, Any]
    bad_input: bool = False  # an EngineError (config, data, model, disk): shown without traceback


TERMINAL_EVENTS = (RunFinished, RunCancelled, RunFailed)
# a run's status once it has ended ('status' in summary.json), one per terminal event
FINAL_STATUSES = ("completed", "cancelled", "failed")


def final_status(event: Event) -> str:
    """The summary status a terminal event stands for: completed, cancelled or failed."""
    return {RunFinished: "completed", RunCancelled: "cancelled"}.get(type(event), "failed")

