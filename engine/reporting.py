"""Experiment trackers (``report.to``): TensorBoard, Weights & Biases, trackio.

A reporter is one more subscriber to a run's events, on rank 0 only: ``StepMetrics`` and
``EvalMetrics`` rows go out under the same names as in ``metrics.jsonl`` (``loss``,
``rewards/chosen``, ``eval/loss``, ...; ``step`` is the x axis and ``elapsed_s`` the wall
time), samples as text (TensorBoard) or a table (wandb, trackio), the resolved config once.

Reporters never block or fail a run: the subscriber only puts events on a queue, a thread of
its own feeds the trackers, and a tracker that raises is switched off with one ``Alert``.
Each tracker's package is an optional extra; :func:`check_reporters` names the missing one
(``uv sync --extra wandb``) before the model loads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.errors import ConfigError

# report.to name -> the module its optional extra installs
EXTRA_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
NOT_SCALARS = ("step", "elapsed_s")  # the x axis and the wall time, not curves
MAX_SAMPLES_PER_STEP = 32
CLOSE_TIMEOUT_S = 60.0


def check_reporters(names: Iterable[str]) -> None:
    """ConfigError (one line, naming the extra) when a tracker's package is not installed."""
    for name in names:
        module = EXTRA_MODULES.get(name)
        if module is None:
            raise ConfigError(f"report.to: unknown tracker {name!r}; expected one of {', '.join(EXTRA_MODULES)}")
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"report.to = {name!r} needs the optional package '{module}', which is not installed: uv sync --extra {name} (pip: pip install 'rlhf-tui[{name}]')")


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The curves of one metrics row: every number but ``step`` and ``elapsed_s``."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key] = float(value)
    return out


def samples_markdown(samples: list[dict[str, Any]]) -> str:
    """Samples of one step as a Markdown table (TensorBoard's text plugin renders it)."""

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", "⏎ ")

    lines = ["| score | advantage | prompt | completion |", "| ---: | ---: | --- | --- |"]
    for s in samples[:MAX_SAMPLES_PER_STEP]:
        lines.append(f"| {float(s.get('score', 0.0)):.4g} | {float(s.get('advantage', 0.0)):.4g} | {cell(s.get('prompt', ''))} | {cell(s.get('completion', ''))} |")
    if len(samples) > MAX_SAMPLES_PER_STEP:
        lines.append(f"\n{len(samples) - MAX_SAMPLES_PER_STEP} more samples at this step in samples.jsonl")
    return "\n".join(lines)


def config_markdown(config: dict[str, Any]) -> str:
    return "```json\n" + json.dumps(config, indent=2, default=str) + "\n```"


# ---------------------------------------------------------------- trackers


class Tracker:
    """One experiment tracker: rows, samples, the config; ``close`` flushes."""

    name = ""

    def config(self, config: dict[str, Any], step: int, wall_time: float) -> None:
        pass

    def row(self, step: int, values: dict[str, float], wall_time: float) -> None:
        raise NotImplementedError

    def samples(self, step: int, samples: list[dict[str, Any]], wall_time: float) -> None:
        pass

    def close(self, status: str = "completed") -> None:
        pass


class TensorBoardTracker(Tracker):
    """Event files in ``logdir`` written with the tensorboard package's own (torch-free) writer."""

    name = "tensorboard"

    def __init__(self, logdir: str | Path, filename_suffix: str = "") -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.logdir), max_queue_size=100, flush_secs=5, filename_suffix=filename_suffix)

    def _write(self, summary: Any, step: int, wall_time: float) -> None:
        self._writer.add_event(self._event_pb2.Event(wall_time=wall_time, step=step, summary=summary))

    def row(self, step: int, values: dict[str, float], wall_time: float) -> None:
        pb = self._summary_pb2
        summary = pb.Summary(value=[pb.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self._write(summary, step, wall_time)

    def _text(self, tag: str, text: str, step: int, wall_time: float) -> None:
        from tensorboard.plugins.text.summary_v2 import text_pb

        self._write(text_pb(tag, text), step, wall_time)

    def config(self, config: dict[str, Any], step: int, wall_time: float) -> None:
        self._text("config", config_markdown(config), step, wall_time)

    def samples(self, step: int, samples: list[dict[str, Any]], wall_time: float) -> None:
        self._text("samples", samples_markdown(samples), step, wall_time)

    def close(self, status: str = "completed") -> None:
        self._writer.flush()
        self._writer.close()


def _online(host: str, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode() -> str:
    """``WANDB_MODE`` when set; else ``offline`` unless logged in (API key or netrc) and online."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    logged_in = bool(os.environ.get("WANDB_API_KEY"))
    if not logged_in:
        netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
        try:
            logged_in = "api.wandb.ai" in netrc.read_text()
        except OSError:
            logged_in = False
    return "online" if logged_in and _online("api.wandb.ai") else "offline"


class WandbTracker(Tracker):
    """A wandb run (offline, synced later with ``wandb sync``, when not logged in or no network)."""

    name = "wandb"

    def __init__(self, project: str, run_id: str, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        self._wandb = wandb
        self.mode = wandb_mode()
        self._run = wandb.init(project=project, name=run_id, dir=str(run_dir), config=config, mode=self.mode, reinit=True)

    def row(self, step: int, values: dict[str, float], wall_time: float) -> None:
        self._run.log(values, step=step)

    def samples(self, step: int, samples: list[dict[str, Any]], wall_time: float) -> None:
        columns = ["prompt", "completion", "score", "advantage"]
        table = self._wandb.Table(columns=columns, data=[[s.get(c) for c in columns] for s in samples])
        self._run.log({"samples": table}, step=step)

    def close(self, status: str = "completed") -> None:
        self._run.finish(exit_code=0 if status == "completed" else 1)


class TrackioTracker(Tracker):
    """A trackio run (local-first: a SQLite database under the Hugging Face cache; no network)."""

    name = "trackio"

    def __init__(self, project: str, run_id: str, config: dict[str, Any]) -> None:
        import trackio

        self._trackio = trackio
        self._run = trackio.init(project=project, name=run_id, config=config)

    def row(self, step: int, values: dict[str, float], wall_time: float) -> None:
        self._run.log(values, step=step)

    def samples(self, step: int, samples: list[dict[str, Any]], wall_time: float) -> None:
        table_class = getattr(self._trackio, "Table", None)
        if table_class is None:  # an older trackio without tables: scalars only
            return
        columns = ["prompt", "completion", "score", "advantage"]
        self._run.log({"samples": table_class(columns=columns, data=[[s.get(c) for c in columns] for s in samples])}, step=step)

    def close(self, status: str = "completed") -> None:
        self._run.finish()


# ---------------------------------------------------------------- the subscriber


class Reporters:
    """The subscriber that feeds the run's trackers from a thread of its own.

    ``reporters(event)`` only queues the event; ``close()`` (at the end of the run) waits
    for the queue to drain and the trackers to flush. A tracker that raises is switched
    off and ``alert(text)`` is called once for it.
    """

    def __init__(self, names: Iterable[str], *, run_dir: Path, project: str, alert: Callable[[str], None]) -> None:
        self.names = list(names)
        self.run_dir = Path(run_dir)
        self.project = project
        self.alert = alert
        self.trackers: list[Tracker] = []
        self._pending_samples: list[dict[str, Any]] = []
        self._sample_step = -1
        self._queue: queue.Queue[ev.Event | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="rlhf-tui-report", daemon=True)
        self._thread.start()

    def __call__(self, event: ev.Event) -> None:
        self._queue.put(event)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    # ---------------------------------------------------------- reporting thread

    def _switch_off(self, tracker: Tracker | str, err: BaseException) -> None:
        name = tracker if isinstance(tracker, str) else tracker.name
        if not isinstance(tracker, str) and tracker in self.trackers:
            self.trackers.remove(tracker)
            try:
                tracker.close("failed")
            except Exception:  # noqa: BLE001 - it failed already; the alert says so
                pass
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        self.alert(f"report.to: {name} switched off ({type(err).__name__}: {reason}); training goes on")

    def _open(self, started: ev.RunStarted) -> None:
        config = started.config
        for name in self.names:
            try:
                if name == "tensorboard":
                    tracker: Tracker = TensorBoardTracker(self.run_dir / "tensorboard")
                elif name == "wandb":
                    tracker = WandbTracker(self.project, started.run_id, self.run_dir, config)
                else:
                    tracker = TrackioTracker(self.project, started.run_id, config)
                tracker.config(config, started.start_step, started.time)
            except Exception as err:  # noqa: BLE001
                self._switch_off(name, err)
                continue
            self.trackers.append(tracker)

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as err:  # noqa: BLE001
                self._switch_off(tracker, err)

    def _flush_samples(self) -> None:
        if self._pending_samples:
            batch, step = self._pending_samples, self._sample_step
            self._pending_samples = []
            self._each(lambda t: t.samples(step, batch, time.time()))

    def _handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self._open(event)
        elif isinstance(event, ev.Sample):
            if event.step != self._sample_step:
                self._flush_samples()
                self._sample_step = event.step
            self._pending_samples.append({"prompt": event.prompt, "completion": event.completion, "score": event.score, "advantage": event.advantage})
        elif isinstance(event, ev.StepMetrics | ev.EvalMetrics):
            self._flush_samples()
            values = scalars(event.metrics)
            if values:
                self._each(lambda t: t.row(event.step, values, event.time))
        elif isinstance(event, ev.TERMINAL_EVENTS):
            self._flush_samples()
            self._close_all(ev.final_status(event))

    def _close_all(self, status: str) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close(status)
            except Exception as err:  # noqa: BLE001
                self._switch_off(tracker.name, err)

    def _loop(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                break
            try:
                self._handle(event)
            except Exception as err:  # noqa: BLE001 - never let reporting kill its thread
                self._switch_off("reporting", err)
        self._flush_samples()
        self._close_all("completed")


def start_reporters(names: Iterable[str], *, run_dir: Path | None, project: str, alert: Callable[[str], None]) -> Reporters | None:
    """Check the trackers' packages (ConfigError naming the extra) and start the subscriber."""
    names = list(names)
    if not names or run_dir is None:
        return None
    check_reporters(names)
    return Reporters(names, run_dir=run_dir, project=project, alert=alert)


# ---------------------------------------------------------------- export


def export_tensorboard(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Event files for a finished (or running) run from its ``metrics.jsonl``, ``samples.jsonl``
    and config: ``RUN_DIR/tensorboard/`` unless ``out_dir`` is given. Returns the event file."""
    from engine.errors import RunDirError
    from engine.rundir import RunDirectory

    check_reporters(["tensorboard"])
    directory = RunDirectory.at(run_dir, must_exist=True)
    rows = directory.read_metrics()
    if not rows:
        raise RunDirError(f"{directory.path}: no metrics to export yet (metrics.jsonl is empty)")
    out = Path(out_dir).expanduser() if out_dir else directory.path / "tensorboard"
    if out.is_dir() and any(p.name.startswith("events.out.tfevents") and not p.name.endswith(".export") for p in out.iterdir()):
        raise RunDirError(f"{out}: already holds event files written during training (report.to); pass --output DIR for another copy")
    for old in out.glob("events.out.tfevents*.export") if out.is_dir() else []:
        old.unlink()  # a second export replaces the first
    started = next((e for e in directory.read_events() if e.get("event") == "RunStarted"), None)
    t0 = float(started["time"]) if started else (directory.path / "metrics.jsonl").stat().st_mtime
    tracker = TensorBoardTracker(out, filename_suffix=".export")
    try:
        if started and isinstance(started.get("config"), dict):
            tracker.config(started["config"], int(started.get("start_step", 0)), t0)
        else:
            from engine.config import load_toml

            if directory.config_path.exists():
                tracker.config(load_toml(directory.config_path), 0, t0)
        by_step: dict[int, list[dict[str, Any]]] = {}
        for sample in _read(directory.samples_path):
            by_step.setdefault(int(sample.get("step", 0)), []).append(sample)
        rows_by_step: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            rows_by_step.setdefault(int(row.get("step", 0)), []).append(row)
        # steps in increasing order (TensorBoard drops points that go back in steps)
        for step in sorted(set(by_step) | set(rows_by_step)):
            here = rows_by_step.get(step, [])
            wall = t0 + float((here[0].get("elapsed_s") if here else 0.0) or 0.0)
            if step in by_step:
                tracker.samples(step, by_step[step], wall)
            for row in here:
                values = scalars(row)
                if values:
                    tracker.row(step, values, t0 + float(row.get("elapsed_s") or 0.0))
    finally:
        tracker.close()
    files = sorted(out.glob("events.out.tfevents*.export"))
    return files[-1] if files else out


def _read(path: Path) -> list[dict[str, Any]]:
    from engine.rundir import read_jsonl

    return read_jsonl(path) if path.exists() else []


__all__ = [
    "EXTRA_MODULES",
    "Reporters",
    "TensorBoardTracker",
    "check_reporters",
    "export_tensorboard",
    "scalars",
    "start_reporters",
    "wandb_mode",
]
