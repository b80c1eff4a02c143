"""Key press -> screen latency of the console while a run trains in the same process.

    uv run python benchmarks/key_latency.py [--presses 60] [--preset tiny-dpo] [--set k=v ...]

Drives the real app headless with Pilot: starts a run in the app's own background thread
(the engine thread competes for the GIL and the CPU cores), waits until training steps
arrive, then presses keys that change visible widgets. Latency is measured from the moment
the key event is posted to the first frame the compositor produces after the action ran
(``App._display``): the time a user waits to see the result, less the terminal's own write.

It also prints the CPU time the UI thread itself spent between the key and that frame
(``time.thread_time``): on a shared, overloaded machine wall time mostly measures other
processes, while this is the work the console does for the key (plus any timer redraws
that ran in between).

Keys: ``l`` (log-y: all four charts redrawn), ``x`` (x axis: all four redrawn), ``m``
(smoothing: EMA recomputed and redrawn). Prints p50/p95/max per key and overall. With
``--other-keys`` also ``space`` (pause / resume: first frame with the new status badge) and
``?`` (first frame of the help dialog).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q * (len(s) - 1))))
    return s[k]


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    from rlhf_tui.app import make_app
    from rlhf_tui.screens.monitor import MonitorScreen
    from rlhf_tui.widgets.chart import MetricChart

    runs = tempfile.mkdtemp(prefix="key-latency-runs-")
    overrides = ["train.max_steps=100000", "train.eval_every=0", "train.save_every=0", *args.overrides]
    if args.idle:  # baseline: the same screen with 300 scripted steps and no training
        from tests.test_app_support import scripted_events

        idle_screen = MonitorScreen(title="idle baseline")
        app = make_app(initial_screen=idle_screen)
    else:
        app = make_app(args.preset, start=True, overrides=overrides, runs_root=runs)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    frames: list[float] = []
    original = app._display

    frame_cpu: list[float] = []
    owners: list[str] = []  # which screen each frame was of

    def display(screen, renderable):  # noqa: ANN001 - textual internals
        if renderable is not None:
            frames.append(time.perf_counter())
            frame_cpu.append(time.thread_time())  # CPU the UI thread has used so far
            owners.append(type(screen).__name__)
        return original(screen, renderable)

    app._display = display  # type: ignore[method-assign]
    out: dict[str, list[float]] = {"l": [], "x": [], "m": []}
    full: dict[str, list[float]] = {"l": [], "x": [], "m": []}
    cpu: dict[str, list[float]] = {"l": [], "x": [], "m": []}
    rng = random.Random(0)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        monitor = app.screen
        assert isinstance(monitor, MonitorScreen)
        if args.idle:
            monitor.apply_events(scripted_events(300))
        t_start = time.monotonic()
        while monitor.state.step < args.warmup_steps:
            if time.monotonic() - t_start > 600:
                raise SystemExit("training did not start within 10 minutes")
            await pilot.pause(0.2)
        step_before = monitor.state.step
        acted: list[float] = []
        for name in ("action_toggle_log_y", "action_toggle_x", "action_cycle_smoothing"):
            fn = getattr(monitor, name)

            def wrapped(fn=fn) -> None:
                fn()
                acted.append(time.perf_counter())

            setattr(monitor, name, wrapped)
        keys = [k for _ in range(args.presses // 3 + 1) for k in ("l", "x", "m")][: args.presses]
        for key in keys:
            await pilot.pause(rng.uniform(0.05, 0.25))
            n_acted, n_frames = len(acted), len(frames)
            t0 = time.perf_counter()
            c0 = time.thread_time()
            app.post_message(_key(key))
            deadline = time.monotonic() + 5
            got_ack = False
            while time.monotonic() < deadline:
                await asyncio.sleep(0.001)
                if len(acted) <= n_acted:
                    continue
                after = [i for i in range(n_frames, len(frames)) if frames[i] >= acted[n_acted]]
                if after and not got_ack:
                    out[key].append((frames[after[0]] - t0) * 1000)
                    cpu[key].append((frame_cpu[after[0]] - c0) * 1000)
                    got_ack = True
                mode = (monitor.state.smoothing, monitor.wall_time, monitor.log_y)
                charts = list(monitor.query(MetricChart))
                if all(c.drawn[1:4] == mode for c in charts):
                    done_at = max(c.drawn_at for c in charts)
                    later = [f for f in frames[n_frames:] if f >= done_at]
                    if later:
                        full[key].append((later[0] - t0) * 1000)
                        break
        steps = monitor.state.step - step_before
        if args.other_keys and not args.idle:
            await other_keys(app, pilot, monitor, frames, owners, args.presses // 6 or 1, out)
        if app.active_run is not None:
            app.active_run.cancel()
        await pilot.pause(0.5)
    if app.active_run is not None:
        app.active_run.join(60)
        print(f"(training advanced {steps} steps while keys were pressed; run status {app.active_run.status})")
    else:
        print("(idle baseline: no training)")
    return out, full, cpu


async def other_keys(app, pilot, monitor, frames, owners, rounds, out) -> None:  # noqa: ANN001
    """``space`` (pause, then resume: key -> first frame with the new status badge) and
    ``?`` (key -> first frame of the help dialog; escape closes it between presses)."""
    from rlhf_tui.screens.dialogs import HelpScreen

    out["space"], out["?"] = [], []
    answered: list[float] = []
    original = monitor._answer_key

    def answer_key(line, original=original) -> None:  # noqa: ANN001 - the badge is set here
        original(line)
        answered.append(time.perf_counter())

    monitor._answer_key = answer_key
    for _ in range(rounds):
        for _ in range(2):  # pause, then resume
            n, k, t0 = len(frames), len(answered), time.perf_counter()
            app.post_message(_key("space"))
            while True:
                await asyncio.sleep(0.001)
                after = [f for f in frames[n:] if len(answered) > k and f >= answered[k]]
                if after:
                    out["space"].append((after[0] - t0) * 1000)
                    break
            await pilot.pause(0.4)
        n, t0 = len(frames), time.perf_counter()
        app.post_message(_key("question_mark"))
        while HelpScreen.__name__ not in owners[n:]:
            await asyncio.sleep(0.001)
        out["?"].append((frames[owners.index(HelpScreen.__name__, n)] - t0) * 1000)
        await pilot.pause(0.3)
        await pilot.press("escape")
        await pilot.pause(0.3)


def _key(key: str):  # noqa: ANN202
    from textual import events

    return events.Key(key, key)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presses", type=int, default=60)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--preset", default="tiny-dpo")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--idle", action="store_true", help="baseline: scripted data, no training")
    p.add_argument("--other-keys", action="store_true", help="also time space (pause/resume) and ? (help dialog)")
    p.add_argument("--switch-interval", type=float, default=0.0, help="sys.setswitchinterval for the run (default: Python's 5 ms)")
    args = p.parse_args()
    from engine.blas import env_with_fast_blas

    env = env_with_fast_blas()
    if env is not None:
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    out, full, cpu = asyncio.run(measure(args))
    load = os.getloadavg()
    print(f"cpu cores: {os.cpu_count()}  load average: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    names = {"l": "l (log-y)", "x": "x (x axis)", "m": "m (smoothing)", "space": "space (pause)", "?": "? (help)"}
    for title, table in (
        ("wall time, key -> first frame showing the change (the chart-mode note)", out),
        ("wall time, key -> all four charts re-plotted", full),
        ("UI-thread CPU time, key -> first frame (what the wait costs without other load)", cpu),
    ):
        print(title)
        print(f"  {'key':<16}{'n':>4}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
        for k, v in table.items():
            print_row(names[k], v)
            if k == "m":
                print_row("all l/x/m", [x for key in ("l", "x", "m") for x in table[key]])


def print_row(name: str, v: list[float]) -> None:
    if v:
        print(f"  {name:<16}{len(v):>4}{statistics.median(v):>9.1f}{pct(v, 0.95):>9.1f}{max(v):>9.1f}")


if __name__ == "__main__":
    main()
