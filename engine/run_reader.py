"""Reading run directories: which trained weights a path means (one rule for every
reader), and following a run another process is writing, as engine events.

Scoring, sampling, fuse, side-by-side chat, PPO's reward model, ``model.init_from`` and the
public ``engine.adapter_path`` all take "a run directory or a checkpoint folder" and ask
the same question; :func:`resolve_weights` answers it, once:

* a **checkpoint folder** (``adapters.safetensors`` + ``adapter_config.json``): itself; it
  belongs to a run when it sits in that run's ``checkpoints/``;
* a **run directory** (``config.toml``), with ``step``: that checkpoint (an error names the
  steps there are, or why it does not check out); without: its newest checkpoint that checks
  out — the one ``rlhf-tui resume`` would take (``checkpoints/step-N`` whose
  ``manifest.json`` sizes and hashes match, or an older manifest-less one whose files load;
  newer ones that do not are skipped and named in ``skipped``); only when it has none, the
  adapters at its root (a run copied without its checkpoints). The root's copy is a mirror
  of the newest checkpoint written after it, so it can only be older: the checkpoint wins;
* anything else: :class:`RunDirError` in one line (not found / not a run directory / no
  weights yet).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.errors import RunDirError

ADAPTERS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class TrainedWeights:
    folder: Path  # holds adapters.safetensors + adapter_config.json (mlx-lm's adapter path)
    run_dir: Path | None  # the run they come from, when known
    step: int | None  # the checkpoint's step; None for a run root's copy or a loose folder
    skipped: tuple[str, ...] = ()  # newer checkpoints passed over, each with why


def is_weights_folder(folder: Path) -> bool:
    return (folder / ADAPTERS).is_file() and (folder / ADAPTER_CONFIG).is_file()


def is_run_dir(folder: Path) -> bool:
    return (folder / "config.toml").is_file()


def resolve_weights(path: str | Path, step: int | None = None) -> TrainedWeights:
    """The weights ``path`` (a run directory or checkpoint folder) means; see the module doc."""
    from engine.rundir import CHECKPOINT_RE, RunDirectory, check_checkpoint

    p = Path(path).expanduser()
    if not p.exists():
        raise RunDirError(f"{p}: not found (give a run directory or one of its checkpoints/step-N folders)")
    if not is_run_dir(p) and is_weights_folder(p):
        run = p.parent.parent if p.parent.name == "checkpoints" and is_run_dir(p.parent.parent) else None
        m = CHECKPOINT_RE.match(p.name)
        own = int(m.group(1)) if m and run is not None else None
        if step is not None and own != step:
            raise RunDirError(f"{p}: is a checkpoint folder{f' of step {own}' if own is not None else ''}; give its run directory to choose step {step}")
        return TrainedWeights(p, run, own)
    if not is_run_dir(p):
        raise RunDirError(f"{p}: not a run directory (no config.toml)")
    directory = RunDirectory(p)
    if step is not None:
        done = directory.checkpoint_dirs()
        for s, folder in done:
            if s == step:
                verdict, why = check_checkpoint(folder)
                if verdict == "bad":
                    raise RunDirError(f"{folder}: checkpoint of step {step} does not check out ({why})")
                return TrainedWeights(folder, p, s)
        have = ", ".join(str(s) for s, _ in done) or "none"
        raise RunDirError(f"{p}: no checkpoint for step {step} (checkpoints: {have})")
    skipped: list[str] = []
    for s, folder, verdict, why in directory.intact_checkpoints():
        if verdict != "bad":
            return TrainedWeights(folder, p, s, tuple(skipped))
        skipped.append(f"step {s}: {why}")
    if skipped:
        raise RunDirError(f"{p}: no checkpoint checks out ({'; '.join(skipped)})")
    if is_weights_folder(p):
        return TrainedWeights(p, p, None)
    raise RunDirError(f"{p}: no weights yet (no checkpoint has been written)")


# ---------------------------------------------------------------- following a live run


def _event_types() -> dict[str, type[ev.Event]]:
    out: dict[str, type[ev.Event]] = {}
    todo = list(ev.Event.__subclasses__())
    while todo:
        cls = todo.pop()
        out[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return out


EVENT_TYPES = _event_types()  # every engine event by the name events.log writes


def event_from_dict(row: dict[str, Any]) -> ev.Event | None:
    """An ``events.log`` line back into its Event (unknown kinds and bad rows give None)."""
    cls = EVENT_TYPES.get(str(row.get("event", "")))
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


class RunFollower:
    """The events of a run another process writes, read from its directory as they appear.

    ``poll()`` returns what was appended since the last call (``events.log`` events, then
    ``metrics.jsonl`` rows as StepMetrics/EvalMetrics, the terminal event last); ``follow()``
    iterates until the run ends or ``stop()``. A run that left a summary but no terminal
    event (its writer died after the summary) ends after two quiet polls.
    """

    def __init__(self, run_dir: str | Path) -> None:
        from engine.rundir import JsonlTail, RunDirectory

        self.directory = RunDirectory(Path(run_dir))
        self._metrics = JsonlTail(self.directory.metrics_path)
        self._events = JsonlTail(self.directory.events_path)
        self._stopped = threading.Event()
        self._quiet_polls_with_summary = 0
        self.ended = False

    def stop(self) -> None:
        self._stopped.set()

    def poll(self) -> list[ev.Event]:
        out: list[ev.Event] = []
        for row in self._events.read_new():
            e = event_from_dict(row)
            if e is not None and not isinstance(e, ev.StepMetrics | ev.EvalMetrics):
                out.append(e)
        metrics = [e for e in map(event_from_metrics_row, self._metrics.read_new()) if e is not None]
        terminal = [e for e in out if isinstance(e, ev.TERMINAL_EVENTS)]
        out = [e for e in out if not isinstance(e, ev.TERMINAL_EVENTS)]
        out = out + metrics + terminal  # RunStarted (events.log) before metric rows; the end last
        if not terminal and not out:
            summary = self.directory.read_summary()
            if summary and summary.get("status") in ev.FINAL_STATUSES:
                self._quiet_polls_with_summary += 1
                if self._quiet_polls_with_summary >= 2:
                    out.append(terminal_from_summary(summary))
        if any(isinstance(e, ev.TERMINAL_EVENTS) for e in out):
            self.ended = True
        return out

    def follow(self, interval: float = 0.25) -> Iterator[ev.Event]:
        """Every event until the run ends (or ``stop()``), polling every ``interval`` seconds."""
        while not self._stopped.is_set() and not self.ended:
            yield from self.poll()
            if not self.ended:
                self._stopped.wait(interval)


def terminal_from_summary(summary: dict[str, Any]) -> ev.Event:
    status = summary.get("status")
    if status == "completed":
        return ev.RunFinished(summary)
    if status == "cancelled":
        return ev.RunCancelled(summary)
    return ev.RunFailed(str(summary.get("error", "the run failed")), "", summary, bad_input=True)
