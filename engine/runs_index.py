"""The runs folder as a list: status, algorithm, preset, steps, final metrics and time of each run.

Also what the run history compares and exports: the hyperparameters that differ between
runs (from each ``config.toml``) and a run's metrics written out as CSV or JSON lines,
next to its other files. No UI imports.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import load_toml
from engine.errors import ConfigError, RunDirError
from engine.rundir import RunDirectory

EVAL_HEADLINES = ("eval/task_score", "eval/rewards/accuracies", "eval/accuracy", "eval/reward", "eval/loss")
LIVE_WINDOW_S = 60.0  # a run without summary.json that wrote within this long is "running"


@dataclass
class RunInfo:
    """One run directory as the history lists it."""

    path: Path
    status: str  # completed | cancelled | failed | running | interrupted
    algorithm: str
    preset: str
    steps: int
    max_steps: int
    started: float  # epoch seconds (when its config.toml was written)
    elapsed_s: float | None
    final: dict[str, Any] = field(default_factory=dict)
    final_eval: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[int] = field(default_factory=list)
    error: str = ""

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def resumable(self) -> bool:
        """Stopped before its last step with a checkpoint to continue from."""
        return self.status in ("cancelled", "failed", "interrupted") and bool(self.checkpoints) and self.steps < self.max_steps

    def headline_eval(self) -> tuple[str, float | None]:
        for key in EVAL_HEADLINES:
            if self.final_eval.get(key) is not None:
                return key, self.final_eval[key]
        return "", None


def read_run(path: str | Path, now: float | None = None) -> RunInfo:
    """What a run directory says about itself (summary.json, config.toml, metrics.jsonl)."""
    directory = RunDirectory(Path(path))
    if not directory.config_path.exists():
        raise RunDirError(f"{directory.path}: not a run directory (no config.toml)")
    try:
        config = load_toml(directory.config_path)
    except ConfigError:
        config = {}
    summary = directory.read_summary() or {}
    rows = directory.read_metrics()
    train_rows = [r for r in rows if not any(k.startswith("eval/") for k in r)]
    eval_rows = [r for r in rows if any(k.startswith("eval/") for k in r)]
    last = train_rows[-1] if train_rows else {}
    status = str(summary.get("status") or "")
    if not status:
        now = time.time() if now is None else now
        latest_write = max((p.stat().st_mtime for p in (directory.metrics_path, directory.events_path, directory.config_path) if p.exists()), default=0.0)
        status = "running" if now - latest_write < LIVE_WINDOW_S else "interrupted"
    train_cfg = config.get("train", {}) if isinstance(config.get("train"), dict) else {}
    final = summary.get("final_metrics") or {k: v for k, v in last.items() if k != "step"}
    final_eval = summary.get("final_eval") or ({k: v for k, v in eval_rows[-1].items() if k.startswith("eval/")} if eval_rows else {})
    elapsed = summary.get("elapsed_s", last.get("elapsed_s"))
    return RunInfo(
        path=directory.path,
        status=status,
        algorithm=str(summary.get("algorithm") or config.get("algorithm", "?")),
        preset=str(summary.get("preset") or config.get("name", "?")),
        steps=int(summary.get("steps", last.get("step", 0)) or 0),
        max_steps=int(summary.get("max_steps", train_cfg.get("max_steps", 0)) or 0),
        started=directory.config_path.stat().st_mtime,
        elapsed_s=float(elapsed) if isinstance(elapsed, (int, float)) else None,
        final=final,
        final_eval=final_eval,
        checkpoints=[s for s, _ in directory.checkpoint_dirs()],
        error=str(summary.get("error", "")),
    )


def list_runs(root: str | Path, now: float | None = None) -> list[RunInfo]:
    """Every run directory directly under ``root``, newest first (unreadable ones are skipped)."""
    base = Path(root).expanduser()
    if not base.is_dir():
        return []
    runs = []
    for child in base.iterdir():
        if child.is_dir() and (child / "config.toml").exists():
            try:
                runs.append(read_run(child, now))
            except (RunDirError, OSError, ValueError):
                continue
    return sorted(runs, key=lambda r: (r.started, r.id), reverse=True)


# ---------------------------------------------------------------- comparing configs


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables as dotted keys: ``{"train": {"seed": 0}}`` -> ``{"train.seed": 0}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_diff(run_dirs: list[str | Path]) -> list[tuple[str, list[Any]]]:
    """(key, one value per run) for every config key whose value is not the same in all runs.

    A key a run's config.toml lacks shows as None for that run. Keys are in schema order
    (the order config.toml is written in).
    """
    flat = []
    for d in run_dirs:
        path = Path(d) / "config.toml"
        flat.append(flatten(load_toml(path)))
    keys: list[str] = []
    for f in flat:
        keys.extend(k for k in f if k not in keys)
    return [(k, [f.get(k) for f in flat]) for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]


# ---------------------------------------------------------------- export


def metric_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every metrics row, each with ``kind`` (``train`` or ``eval``) after its step."""
    rows = RunDirectory(Path(run_dir)).read_metrics()
    out = []
    for r in rows:
        kind = "eval" if any(k.startswith("eval/") for k in r) else "train"
        out.append({"step": r.get("step"), "kind": kind, **{k: v for k, v in r.items() if k != "step"}})
    return out


def read_samples(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``samples.jsonl`` (PPO/GRPO): step, prompt, completion, score, advantage."""
    from engine.rundir import read_jsonl

    return read_jsonl(RunDirectory(Path(run_dir)).samples_path)


__all__ = ["RunInfo", "config_diff", "flatten", "list_runs", "metric_rows", "read_run", "read_samples"]
