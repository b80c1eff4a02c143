"""`rlhf-tui monitor RUN_DIR`: the monitor follows a run directory another writer fills."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from functools import partial

from rlhf_tui.app import make_app
from rlhf_tui.screens.monitor import MonitorScreen
from tests import helpers
from tests.test_app_support import scripted_eval, scripted_metrics, write_rows

TOTAL = 30


def writer(run_dir, started: threading.Event, go_on: threading.Event) -> None:
    """What a headless run writes, in the same files and order, a few rows at a time."""
    events = run_dir / "events.log"
    write_rows(events, [{"event": "RunStarted", "time": 1.0, "run_id": run_dir.name, "run_dir": str(run_dir), "algorithm": "dpo", "total_steps": TOTAL, "start_step": 0, "world_size": 2, "config": {}}])
    write_rows(run_dir / "metrics.jsonl", [scripted_metrics(s) for s in range(1, 11)])
    started.set()
    go_on.wait(30)  # the test looks at the half-written state first
    for s in range(11, TOTAL + 1):
        write_rows(run_dir / "metrics.jsonl", [scripted_metrics(s)])
        if s % 10 == 0:
            write_rows(run_dir / "metrics.jsonl", [scripted_eval(s)])
            write_rows(events, [{"event": "CheckpointSaved", "time": 2.0, "step": s, "path": str(run_dir / f"checkpoints/step-{s:06d}")}])
        time.sleep(0.01)
    summary = {"status": "completed", "steps": TOTAL, "max_steps": TOTAL, "world_size": 2, "run_dir": str(run_dir), "elapsed_s": 7.5, "final_metrics": scripted_metrics(TOTAL), "final_eval": scripted_eval(TOTAL), "last_checkpoint": TOTAL}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    write_rows(events, [{"event": "RunFinished", "time": 3.0, "summary": summary}])


wait_until = partial(helpers.wait_until, timeout=30.0)


def test_monitor_follows_a_directory_as_it_grows(tmp_path):
    run_dir = tmp_path / "dpo-run"
    run_dir.mkdir()
    started, go_on = threading.Event(), threading.Event()
    thread = threading.Thread(target=writer, args=(run_dir, started, go_on), daemon=True)
    thread.start()
    assert started.wait(10)

    async def scenario() -> None:
        app = make_app(follow_dir=str(run_dir))
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            monitor = app.screen
            assert isinstance(monitor, MonitorScreen) and monitor.run is None
            await wait_until(pilot, lambda: monitor.state.step == 10)
            assert monitor.state.status == "running" and monitor.state.world_size == 2
            # read-only: pause and cancel are not offered for another process's run
            assert monitor.check_action("toggle_pause", ()) is False
            assert monitor.check_action("cancel_run", ()) is False
            go_on.set()
            await wait_until(pilot, lambda: monitor.state.status == "completed")
            st = monitor.state
            assert st.series["loss"].steps == list(range(1, TOTAL + 1))
            assert st.series["loss"].raw[-1] == scripted_metrics(TOTAL)["loss"]
            assert st.headline_eval() == ("eval/rewards/accuracies", scripted_eval(TOTAL)["eval/rewards/accuracies"])
            assert st.last_checkpoint == (TOTAL, str(run_dir / f"checkpoints/step-{TOTAL:06d}"))
            assert str(run_dir) in str(monitor.query_one("#outcome").render())
            await pilot.press("escape")  # a followed run may be left at any time
            await pilot.pause()
            assert app.screen.__class__.__name__ == "PresetsScreen"

    asyncio.run(scenario())
    thread.join(5)
