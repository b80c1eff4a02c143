"""The monitor's model and the engine->UI bridge, without a screen."""

from __future__ import annotations

import math
import threading
import time

from engine import events as ev
from rlhf_tui.bridge import RunBridge, RunDirectoryFollower, event_from_dict
from rlhf_tui.messages import RunEventsArrived
from rlhf_tui.monitoring import MetricSeries, RunState, downsample_index


def test_ema_is_debiased_exponential_average():
    values = [4.0, 2.0, 8.0, 1.0]
    w = 0.6
    s = MetricSeries(smoothing=w)
    for i, v in enumerate(values):
        s.append(i + 1, float(i), v)
    # written out: ema_n = sum_k (1-w) w^(n-k) v_k / (1 - w^n)
    for n in range(1, len(values) + 1):
        expected = sum((1 - w) * w ** (n - 1 - k) * values[k] for k in range(n)) / (1 - w**n)
        assert math.isclose(s.ema[n - 1], expected, rel_tol=1e-12)
    assert s.ema[0] == 4.0  # the first point is not dragged towards zero
    s.set_smoothing(0.0)
    assert s.ema == values


def test_downsample_keeps_ends_and_bounds_points():
    idx = downsample_index(10_000, 200)
    assert len(idx) <= 200 and idx[0] == 0 and idx[-1] == 9_999
    assert list(downsample_index(5, 200)) == [0, 1, 2, 3, 4]


def test_log_y_hides_non_positive_values():
    s = MetricSeries(smoothing=0.0)
    for i, v in enumerate([100.0, -1.0, 0.001]):
        s.append(i, i, v)
    x, raw, _ = s.xy(wall_time=False, log_y=True, max_points=100)
    assert raw[0] == 2.0 and math.isnan(raw[1]) and math.isclose(raw[2], -3.0)


def test_log_y_leaves_out_values_far_below_the_rest():
    """A KL of 1e-12 at step 1 must not stretch the axis over twelve decades."""
    s = MetricSeries(smoothing=0.0)
    for i, v in enumerate([1e-12, 0.5, 20.0, 3e-5]):
        s.append(i, i, v)
    _, raw, _ = s.xy(wall_time=False, log_y=True, max_points=100)
    assert math.isnan(raw[0])  # 1e-12 < 20 / 10**6
    assert math.isclose(raw[1], math.log10(0.5)) and math.isclose(raw[2], math.log10(20.0))
    assert math.isclose(raw[3], math.log10(3e-5))  # 3e-5 >= 2e-5: kept


def _started(total: int = 100) -> ev.RunStarted:
    return ev.RunStarted("r", "runs/r", "dpo", total, 0, 1, {})


def test_progress_and_eta_from_logged_elapsed_time():
    st = RunState()
    st.apply(_started(100))
    for step in range(1, 21):
        st.apply(ev.StepMetrics(step, {"step": step, "elapsed_s": 0.5 * step, "loss": 1.0, "kl": 0.0}))
    assert st.fraction == 0.2
    assert math.isclose(st.eta_s, 0.5 * 80)  # 80 steps left at 0.5 s each


def test_alerts_for_nan_loss_missing_kl_and_divergence():
    st = RunState()
    st.apply(_started())
    alerts = []
    for step in range(1, 16):
        alerts += st.apply(ev.StepMetrics(step, {"step": step, "elapsed_s": step, "loss": 0.5, "kl": 0.1}))
    assert alerts == []
    assert any("loss is missing" in a for a in st.apply(ev.StepMetrics(16, {"step": 16, "loss": None, "kl": 0.1})))
    assert any("KL is missing" in a for a in st.apply(ev.StepMetrics(17, {"step": 17, "loss": 0.5, "kl": None})))
    diverged = []
    for step in range(18, 40):
        diverged += st.apply(ev.StepMetrics(step, {"step": step, "loss": 50.0, "kl": 0.1}))
    assert len([a for a in diverged if "loss is diverging" in a]) == 1  # raised once, not every step


def test_kl_divergence_alerts_for_rl_only():
    """DPO's KL is measured on the data and grows by design: climbing from 0 to 30 is not an
    alarm. PPO's KL on its own samples jumping from 0.1 to 30 is (policy collapse)."""

    def climb(algorithm: str) -> list[str]:
        st = RunState()
        st.apply(ev.RunStarted("r", "", algorithm, 100, 0, 1, {}))
        alerts = []
        for step in range(1, 60):
            kl = 0.1 if step < 20 else 30.0
            alerts += st.apply(ev.StepMetrics(step, {"step": step, "loss": 0.5, "kl": kl}))
        return alerts

    assert climb("dpo") == []
    assert len([a for a in climb("ppo") if "KL is diverging" in a]) == 1


def test_sft_null_kl_is_not_an_alert():
    st = RunState()
    st.apply(ev.RunStarted("r", "", "sft", 10, 0, 1, {}))
    alerts = []
    for step in range(1, 5):
        alerts += st.apply(ev.StepMetrics(step, {"step": step, "loss": 1.0, "kl": None}))
    assert alerts == []


def test_bridge_batches_a_flood_and_keeps_order():
    got: list[RunEventsArrived] = []
    done = threading.Event()

    def post(msg: RunEventsArrived) -> None:
        got.append(msg)
        if any(isinstance(e, ev.RunFinished) for e in msg.events):
            done.set()

    bridge = RunBridge(post, interval=0.1)
    for step in range(1, 5001):  # a run far faster than any screen
        bridge(ev.StepMetrics(step, {"step": step}))
    bridge(ev.RunFinished({"status": "completed"}))
    assert done.wait(5)
    steps = [e.step for m in got for e in m.events if isinstance(e, ev.StepMetrics)]
    assert steps == list(range(1, 5001))
    assert len(got) < 50  # thousands of events, a handful of messages


def test_follower_reads_appended_rows_and_skips_a_torn_line(tmp_path):
    posted: list[RunEventsArrived] = []
    (tmp_path / "events.log").write_text('{"event": "RunStarted", "time": 1.0, "run_id": "x", "run_dir": "d", "algorithm": "dpo", "total_steps": 3, "start_step": 0, "world_size": 1, "config": {}}\n')
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "lo')
    f = RunDirectoryFollower(tmp_path, posted.append)
    first = f.poll()
    assert [type(e).__name__ for e in first] == ["RunStarted", "StepMetrics"]
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('ss": 0.6}\n{"step": 2, "elapsed_s": 1.0, "eval/rewards/accuracies": 0.75}\n')
    second = f.poll()
    assert [(type(e).__name__, e.step) for e in second] == [("StepMetrics", 2), ("EvalMetrics", 2)]
    assert second[0].metrics["loss"] == 0.6
    assert not f.ended
    with open(tmp_path / "events.log", "a") as fh:
        fh.write('{"event": "RunFinished", "time": 2.0, "summary": {"status": "completed", "steps": 2}}\n')
    assert isinstance(f.poll()[-1], ev.RunFinished) and f.ended
    assert len(posted) == 3


def test_event_from_dict_ignores_unknown_kinds():
    assert event_from_dict({"event": "Nope"}) is None
    e = event_from_dict({"event": "LogLine", "time": 3.0, "text": "hi", "level": "info", "extra": 1})
    assert isinstance(e, ev.LogLine) and e.text == "hi" and e.time == 3.0


def test_follower_ends_on_a_summary_without_terminal_event(tmp_path):
    (tmp_path / "summary.json").write_text('{"status": "cancelled", "steps": 4}')
    f = RunDirectoryFollower(tmp_path, lambda m: None)
    f.poll()
    out = f.poll()
    assert isinstance(out[-1], ev.RunCancelled) and f.ended
    time.sleep(0)


def test_log_axis_labels_fit_the_margin():
    from rlhf_tui.widgets.chart import Log10Formatter

    labels = Log10Formatter().get_labels_for_ticks([3.5, 0.0, -1.0, -4.0, 6.0])
    assert labels == ["3.16k", "1", "0.1", "1e-04", "1M"]
    assert all(len(label) <= 7 for label in labels)


def test_latest_values_are_right_aligned_and_long_names_cut():
    from rlhf_tui.screens.monitor import value_lines

    text = value_lines([("loss", "0.6931"), ("rewards/accuracies_on_a_long_name", "1.0000")], 24)
    lines = text.plain.split("\n")
    assert lines[0] == "loss" + " " * 14 + "0.6931"
    assert all(len(line) == 24 for line in lines)
    assert lines[1].endswith(" 1.0000") and lines[1].startswith("rewards/acc") and "…" in lines[1]


def test_a_run_freezes_the_heap_while_it_trains_and_gives_it_back_when_it_ends():
    """Frozen objects are never collected: a finished run's model must not stay frozen
    (a session of many runs or labelling rounds would keep every old model in memory)."""
    import asyncio
    import gc

    from rlhf_tui.app import make_app
    from rlhf_tui.screens.monitor import MonitorScreen

    async def scenario() -> None:
        screen = MonitorScreen(title="heap")
        app = make_app(initial_screen=screen)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            gc.unfreeze()
            screen.apply_events([_started()])
            assert gc.get_freeze_count() > 0
            screen.apply_events([ev.RunFinished({"status": "completed", "steps": 1})])
            assert gc.get_freeze_count() == 0

    asyncio.run(scenario())
