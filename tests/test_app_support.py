"""Shared pieces for the console tests: a scripted, deterministic run and small data.

(No tests here; pytest collects the module harmlessly.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from engine import events as ev

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC: every scripted event has a fixed time
RUN_ID = "tiny-dpo-20260101-000000"
RUN_DIR = f"runs/{RUN_ID}"


def scripted_metrics(step: int) -> dict:
    """One DPO-like metrics row, from closed-form curves (no randomness)."""
    loss = 0.6931 * math.exp(-step / 40) + 0.05 + 0.03 * math.sin(step * 1.7)
    kl = 0.002 * step + 0.01 * math.cos(step * 0.9)
    margin = 0.04 * step * (1 + 0.1 * math.sin(step))
    return {
        "step": step,
        "elapsed_s": round(0.25 * step, 4),
        "learning_rate": 5e-4,
        "loss": loss,
        "kl": kl,
        "reward": margin,
        "tokens_per_sec": 3000 + 200 * math.sin(step / 3),
        "rewards/chosen": margin / 2,
        "rewards/rejected": -margin / 2,
        "rewards/accuracies": min(1.0, 0.5 + step / 100),
        "rewards/margins": margin,
        "grad_norm": 1.0 / (1 + step / 20),
        "step_time_s": 0.25,
        "memory_active_gb": 0.05 + 0.001 * (step % 7),
        "memory_peak_gb": 0.12,
    }


def scripted_eval(step: int) -> dict:
    return {"step": step, "elapsed_s": round(0.25 * step, 4), "eval/loss": 0.69 - step / 400, "eval/rewards/accuracies": min(0.96, 0.5 + step / 150), "eval/rewards/margins": step / 50}


def scripted_events(steps: int, total: int = 200, *, finish: str = "") -> list[ev.Event]:
    """RunStarted, ``steps`` steps with evals every 25 and a checkpoint at 50, optional end."""
    out: list[ev.Event] = [
        ev.PhaseChanged("loading model", 0, 0, time=T0),
        ev.RunStarted(RUN_ID, RUN_DIR, "dpo", total, 0, 1, {}, time=T0 + 1),
        ev.LogLine("dpo on tiny-sorter: 30,208 trainable parameters (full), world size 1", time=T0 + 1),
    ]
    for s in range(1, steps + 1):
        out.append(ev.StepMetrics(s, scripted_metrics(s), time=T0 + 1 + 0.25 * s))
        if s % 25 == 0:
            out.append(ev.EvalMetrics(s, scripted_eval(s), time=T0 + 1 + 0.25 * s))
        if s % 50 == 0:
            out.append(ev.CheckpointSaved(s, f"{RUN_DIR}/checkpoints/step-{s:06d}", time=T0 + 1 + 0.25 * s))
    summary = {"status": finish, "steps": steps, "max_steps": total, "world_size": 1, "algorithm": "dpo", "run_dir": RUN_DIR, "elapsed_s": 0.25 * steps, "final_metrics": scripted_metrics(steps), "final_eval": scripted_eval(steps), "last_checkpoint": steps}
    if finish == "completed":
        out.append(ev.RunFinished(summary, time=T0 + 2 + 0.25 * steps))
    elif finish == "cancelled":
        out.append(ev.RunCancelled(summary, time=T0 + 2 + 0.25 * steps))
    elif finish == "failed":
        summary["error"] = f"loss is NaN at step {steps} (train.on_nan = 'stop'); last good checkpoint: step 50"
        out.append(ev.RunFailed(summary["error"], "", summary, bad_input=True, time=T0 + 2 + 0.25 * steps))
    return out


def small_pairs(path: Path, n: int = 48) -> Path:
    """The first ``n`` bundled preference pairs: a DPO run whose reference pass is quick."""
    lines = (ROOT / "presets/data/sort_train.jsonl").read_text().splitlines()[:n]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
