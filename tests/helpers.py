"""Small shared helpers for the tests (not fixtures: plain functions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `rlhf-tui` entry point in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "rlhf_tui", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def small_data(folder: Path, n_train: int = 64, n_eval: int = 32) -> tuple[Path, Path]:
    """The first rows of the bundled sorting pairs, for quick runs."""
    from engine.presets import builtin_dir

    data = builtin_dir() / "data"
    train = folder / "train.jsonl"
    evalf = folder / "valid.jsonl"
    train.write_text("".join(data.joinpath("sort_train.jsonl").read_text().splitlines(keepends=True)[:n_train]))
    evalf.write_text("".join(data.joinpath("sort_eval.jsonl").read_text().splitlines(keepends=True)[:n_eval]))
    return train, evalf


def quick_overrides(folder: Path, steps: int = 4, **extra: object) -> list[str]:
    train, evalf = small_data(folder)
    out = [f"data.train={train}", f"data.eval={evalf}", f"train.max_steps={steps}", "train.batch_size=4",
           "train.eval_every=0", "train.save_every=0"]
    out += [f"{k.replace('__', '.')}={v}" for k, v in extra.items()]
    return out


async def wait_until(pilot, condition, timeout: float = 180.0, what="") -> None:  # noqa: ANN001
    """Let the app run until ``condition()`` holds; fail naming ``what`` (text, or a callable
    giving it) after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await pilot.pause(0.05)


def run_pilot(app, script, size: tuple[int, int] = (140, 42)) -> None:  # noqa: ANN001
    """Run ``script(pilot)`` against ``app`` headless at ``size``."""
    import asyncio

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await script(pilot)

    asyncio.run(main())
