"""A finished run's charts can be saved as an SVG picture from the monitor."""

from __future__ import annotations

import asyncio

from rlhf_tui.app import make_app
from rlhf_tui.screens.monitor import MonitorScreen
from tests.test_app_support import scripted_events


def test_shift_s_saves_the_monitor_as_svg_in_the_run_directory(tmp_path):
    events = scripted_events(40, total=40, finish="completed")
    for e in events:  # point the scripted run at a real folder
        if hasattr(e, "run_dir"):
            object.__setattr__(e, "run_dir", str(tmp_path))
        if hasattr(e, "summary"):
            e.summary["run_dir"] = str(tmp_path)
    screen = MonitorScreen(title="tiny-dpo · DPO")
    app = make_app(initial_screen=screen)

    async def go():
        async with app.run_test(size=(140, 44)) as pilot:
            await pilot.pause()
            screen.apply_events(events)
            screen.redraw(force=True)
            await pilot.pause(0.2)
            await pilot.press("S")
            await pilot.pause(0.2)

    asyncio.run(go())
    (svg,) = tmp_path.glob("charts-step-*.svg")
    text = svg.read_text()
    assert svg.name == "charts-step-000040.svg"
    assert text.startswith("<svg") and "Loss" in text and "Reward" in text
