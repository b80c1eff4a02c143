"""What the run monitor knows about a run, kept apart from widgets so it is easy to test.

:class:`RunState` folds engine events into metric series (raw and EMA-smoothed), progress,
ETA, the latest values, eval history, memory and alerts. It never touches the UI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import events as ev
from engine.algorithms.registry import REGISTRY

PANELS: tuple[tuple[str, str], ...] = (
    ("loss", "Loss"),
    ("kl", "KL"),
    ("reward", "Reward"),
    ("tokens_per_sec", "Tokens / s"),
)
EVAL_HEADLINE_KEYS = ("eval/task_score", "eval/rewards/accuracies", "eval/accuracy", "eval/reward", "eval/loss")
SMOOTHING_STEPS = (0.0, 0.6, 0.8, 0.9, 0.97)
DEFAULT_SMOOTHING = 0.8
# keys that are shown elsewhere (progress, memory) rather than in the values table
NOT_IN_TABLE = {"step", "elapsed_s", "memory_active_gb", "memory_peak_gb", "step_time_s"}


def finite(value: Any) -> float | None:
    """A float when ``value`` is a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


class MetricSeries:
    """One metric against step and wall time, with a debiased EMA (TensorBoard-style)."""

    def __init__(self, smoothing: float = DEFAULT_SMOOTHING) -> None:
        self.smoothing = smoothing
        self.steps: list[float] = []
        self.elapsed: list[float] = []
        self.raw: list[float] = []
        self.ema: list[float] = []
        self._acc = 0.0
        self._n = 0

    def __len__(self) -> int:
        return len(self.raw)

    def append(self, step: float, elapsed: float, value: float) -> None:
        self.steps.append(step)
        self.elapsed.append(elapsed)
        self.raw.append(value)
        self.ema.append(self._smooth(value))

    def _smooth(self, value: float) -> float:
        w = self.smoothing
        self._acc = self._acc * w + (1 - w) * value
        self._n += 1
        debias = 1 - w**self._n if w > 0 else 1.0
        return self._acc / debias

    def set_smoothing(self, smoothing: float) -> None:
        self.smoothing = smoothing
        self._acc, self._n = 0.0, 0
        self.ema = [self._smooth(v) for v in self.raw]

    @property
    def last(self) -> float | None:
        return self.raw[-1] if self.raw else None

    @property
    def last_smoothed(self) -> float | None:
        return self.ema[-1] if self.ema else None

    def xy(self, *, wall_time: bool, log_y: bool, max_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, raw y, smoothed y), downsampled to at most ``max_points``; log10 when log_y."""
        x = np.asarray(self.elapsed if wall_time else self.steps, dtype=float)
        raw = np.asarray(self.raw, dtype=float)
        ema = np.asarray(self.ema, dtype=float)
        idx = downsample_index(len(x), max_points)
        x, raw, ema = x[idx], raw[idx], ema[idx]
        if log_y:
            raw, ema = log10_view(raw), log10_view(ema)
        return x, raw, ema


LOG_DECADES = 6  # a log-y chart spans at most this many decades below its largest value


def log10_view(y: np.ndarray) -> np.ndarray:
    """log10(y) with values <= 0, and those more than LOG_DECADES below the largest, as NaN
    (hidden): one KL of 1e-12 at step 1 would otherwise squash the rest into the top row."""
    positive = np.isfinite(y) & (y > 0)
    if not positive.any():
        return np.full(y.shape, np.nan)
    floor = y[positive].max() * 10.0**-LOG_DECADES
    keep = positive & (y >= floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(keep, np.log10(np.where(keep, y, 1.0)), np.nan)


def downsample_index(n: int, max_points: int) -> np.ndarray:
    """Evenly spaced indices into ``n`` points, always keeping the first and the last."""
    if n <= max_points or max_points < 2:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def fmt(value: Any, digits: int = 4) -> str:
    f = finite(value)
    if f is None:
        return "—" if value is None else str(value)
    if f == 0:
        return "0"
    if abs(f) >= 1000:
        return f"{f:,.0f}"
    if abs(f) >= 100:
        return f"{f:.1f}"
    if abs(f) < 10 ** -(digits - 1):
        return f"{f:.2e}"
    return f"{f:.{digits}f}"


def gigabytes(value: float | None) -> str:
    """Memory in GB, or MB below one GB (MLX reports bytes; the metrics hold GB)."""
    f = finite(value)
    if f is None:
        return "—"
    return f"{f:.2f} GB" if f >= 1 else f"{f * 1024:.0f} MB"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = int(max(seconds, 0))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# algorithms whose KL is measured on the policy's own samples: a blow-up there means the
# policy is collapsing or gaming the reward, worth an alert
ON_POLICY = tuple(a.name for a in REGISTRY if a.on_policy)


@dataclass
class DivergenceWatch:
    """Alerts when a smoothed metric climbs far above the best it reached (once per episode)."""

    name: str
    factor: float = 3.0
    slack: float = 1.0
    warmup: int = 10
    best: float | None = None
    armed: bool = True

    def update(self, smoothed: float, count: int) -> str | None:
        if count < self.warmup:
            self.best = smoothed if self.best is None else min(self.best, smoothed)
            return None
        self.best = smoothed if self.best is None else min(self.best, smoothed)
        limit = max(self.best * self.factor, self.best + self.slack) if self.best > 0 else self.best + self.slack
        if smoothed > limit and self.armed:
            self.armed = False
            return f"{self.name} is diverging: smoothed {fmt(smoothed)} vs best {fmt(self.best)}"
        if smoothed <= limit:
            self.armed = True
        return None


@dataclass
class RunState:
    """Everything the monitor shows, folded from events."""

    smoothing: float = DEFAULT_SMOOTHING
    run_id: str = ""
    run_dir: str = ""
    algorithm: str = ""
    total_steps: int = 0
    start_step: int = 0
    world_size: int = 1
    step: int = 0
    elapsed_s: float = 0.0
    status: str = "waiting"  # waiting | loading | running | paused | completed | cancelled | failed
    phase: str = ""
    phase_done: int = 0
    phase_total: int = 0
    latest: dict[str, Any] = field(default_factory=dict)
    latest_eval: dict[str, Any] = field(default_factory=dict)
    eval_history: dict[str, list[float]] = field(default_factory=dict)
    memory_active: list[float] = field(default_factory=list)
    memory_peak: float | None = None
    series: dict[str, MetricSeries] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    error: str = ""
    traceback: str = ""
    last_checkpoint: tuple[int, str] | None = None
    checkpoint_steps: list[int] = field(default_factory=list)
    seen_kl: bool = False
    watches: dict[str, DivergenceWatch] = field(default_factory=dict)
    steps_seen: int = 0
    version: int = 0  # bumped on every change; the UI redraws when it moved

    def __post_init__(self) -> None:
        for key, _ in PANELS:
            self.series[key] = MetricSeries(self.smoothing)
        self.watches = {"loss": DivergenceWatch("loss"), "kl": DivergenceWatch("KL", factor=10.0, slack=5.0)}

    # ------------------------------------------------------------------ folding

    def apply(self, event: ev.Event) -> list[str]:
        """Fold one event in; return alert texts the UI should raise for it."""
        self.version += 1
        alerts: list[str] = []
        if isinstance(event, ev.RunStarted):
            self.run_id, self.run_dir, self.algorithm = event.run_id, event.run_dir, event.algorithm
            self.total_steps, self.start_step, self.world_size = event.total_steps, event.start_step, event.world_size
            self.step = max(self.step, event.start_step)
            self.status = "running"
            self.phase = ""
        elif isinstance(event, ev.PhaseChanged):
            self.phase, self.phase_done, self.phase_total = event.phase, event.done, event.total
            if self.status == "waiting":
                self.status = "loading"
        elif isinstance(event, ev.StepMetrics):
            alerts += self._apply_step(event.step, event.metrics)
        elif isinstance(event, ev.EvalMetrics):
            self.latest_eval = dict(event.metrics)
            for k, v in event.metrics.items():
                f = finite(v)
                if k.startswith("eval/") and f is not None:
                    self.eval_history.setdefault(k, []).append(f)
            self.phase = ""
        elif isinstance(event, ev.CheckpointSaved):
            self.last_checkpoint = (event.step, event.path)
            if event.step not in self.checkpoint_steps:
                self.checkpoint_steps.append(event.step)
        elif isinstance(event, ev.RunPaused):
            self.status = "paused"
        elif isinstance(event, ev.RunResumed):
            self.status = "running"
        elif isinstance(event, ev.TERMINAL_EVENTS):
            self.summary = dict(event.summary)
            self.status = ev.final_status(event)
            self.phase = ""
            if isinstance(event, ev.RunFailed):
                self.error, self.traceback = event.error, event.traceback
            if not self.run_dir and event.summary.get("run_dir"):
                self.run_dir = str(event.summary["run_dir"])
        return alerts

    def _apply_step(self, step: int, m: dict[str, Any]) -> list[str]:
        alerts: list[str] = []
        self.step = step
        self.steps_seen += 1
        if self.status in ("waiting", "loading"):
            self.status = "running"
        self.phase = ""
        self.elapsed_s = finite(m.get("elapsed_s")) or self.elapsed_s
        self.latest = dict(m)
        for key, series in self.series.items():
            v = finite(m.get(key))
            if v is not None:
                series.append(step, self.elapsed_s, v)
        active, peak = finite(m.get("memory_active_gb")), finite(m.get("memory_peak_gb"))
        if active is not None:
            self.memory_active.append(active)
        if peak is not None:
            self.memory_peak = peak
        # NaN / missing values
        if "loss" in m and finite(m.get("loss")) is None:
            alerts.append(f"step {step}: loss is {_what(m.get('loss'))}")
        kl = m.get("kl")
        if finite(kl) is not None:
            self.seen_kl = True
        elif self.seen_kl or (isinstance(kl, float) and not math.isfinite(kl)):
            alerts.append(f"step {step}: KL is {_what(kl)}")
        # divergence of the smoothed curves
        for key, watch in self.watches.items():
            if key == "kl" and self.algorithm not in ON_POLICY:
                continue  # DPO's KL is measured on the data and is meant to grow: no alarm
            s = self.series[key]
            if s.raw and s.steps[-1] == step and s.last_smoothed is not None:
                text = watch.update(s.last_smoothed, len(s))
                if text:
                    alerts.append(f"step {step}: {text}")
        return alerts

    def set_smoothing(self, smoothing: float) -> None:
        self.smoothing = smoothing
        for s in self.series.values():
            s.set_smoothing(smoothing)
        self.version += 1

    # ------------------------------------------------------------------ derived

    @property
    def ended(self) -> bool:
        return self.status in ev.FINAL_STATUSES

    @property
    def fraction(self) -> float:
        if not self.total_steps:
            return 0.0
        return min(1.0, self.step / self.total_steps)

    @property
    def eta_s(self) -> float | None:
        """Remaining time from the mean time per step so far (in this process's steps)."""
        done = self.step - self.start_step
        if done <= 0 or not self.total_steps or self.elapsed_s <= 0:
            return None
        per_step = self.elapsed_s / max(self.step, 1) if self.start_step == 0 else None
        if per_step is None:
            first = self.series["loss"].elapsed[0] if self.series["loss"].elapsed else 0.0
            per_step = (self.elapsed_s - first) / max(done - 1, 1)
        return per_step * max(self.total_steps - self.step, 0)

    def headline_eval(self) -> tuple[str, float | None]:
        for key in EVAL_HEADLINE_KEYS:
            if key in self.latest_eval:
                return key, finite(self.latest_eval.get(key))
        return "", None

    def table_rows(self) -> list[tuple[str, str]]:
        return [(k, fmt(v)) for k, v in self.latest.items() if k not in NOT_IN_TABLE]


def _what(value: Any) -> str:
    if value is None:
        return "missing (null)"
    return "NaN" if isinstance(value, float) and math.isnan(value) else str(value)
