"""Run history: listing, overlay, config diff, export, resume, samples view (Pilot + snapshots).

Run directories are written by the tests (fixed names, times and numbers) except for the
resume test, which trains two steps of the tiny built-in model for real.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
import tomli_w

from engine.config import resolved, to_dict
from engine.metrics_export import export_beside
from engine.presets import load_preset
from engine.runs_index import config_diff, list_runs
from rlhf_tui.app import make_app
from rlhf_tui.screens.history import ConfigDiffScreen, HistoryScreen, OverlayScreen
from rlhf_tui.screens.monitor import MonitorScreen
from rlhf_tui.screens.samples import SamplesScreen, order_rows, parse_filter, row_from
from rlhf_tui.widgets.overlay_chart import OverlayChart
from tests.helpers import quick_overrides, run_pilot, write_jsonl

SIZE = (140, 42)
FIXED = Path("/tmp/rlhf-tui-history-snapshots")
STARTED = 1_780_000_000.0  # a fixed start time (2026-05-28 UTC)


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.delenv("TZ", raising=False)
    time.tzset()


def fake_run(root: Path, name: str, *, status: str | None = "completed", lr: float = 5e-4, beta: float = 0.3,
             steps: int = 20, max_steps: int = 20, checkpoints: tuple[int, ...] = (), started: float = STARTED,
             loss0: float = 0.7) -> Path:
    """A run directory as the engine writes it: config.toml, metrics.jsonl, summary.json, checkpoints."""
    d = root / name
    d.mkdir(parents=True)
    cfg = load_preset("tiny-dpo", [f"train.learning_rate={lr}", f"dpo.beta={beta}", f"train.max_steps={max_steps}"])
    cfg.data.train, cfg.data.eval = "/data/train.jsonl", "/data/eval.jsonl"
    (d / "config.toml").write_text(tomli_w.dumps(to_dict(resolved(cfg))))
    rows = []
    for s in range(1, steps + 1):
        rows.append({"step": s, "elapsed_s": s * 0.5, "learning_rate": lr, "loss": loss0 * 0.9**s, "kl": 0.01 * s,
                     "reward": 0.1 * s, "tokens_per_sec": 1000.0 + s, "grad_norm": 1.0})
        if s % 5 == 0:
            rows.append({"step": s, "elapsed_s": s * 0.5, "eval/rewards/accuracies": 0.5 + 0.02 * s, "eval/loss": loss0 * 0.9**s})
    write_jsonl(d / "metrics.jsonl", rows)
    last = {k: v for k, v in [r for r in rows if "loss" in r][-1].items() if k != "step"}
    last_eval = [r for r in rows if "eval/loss" in r]
    if status is not None:
        (d / "summary.json").write_text(json.dumps({
            "status": status, "steps": steps, "max_steps": max_steps, "world_size": 1, "algorithm": "dpo",
            "preset": "tiny-dpo", "run_dir": str(d), "elapsed_s": steps * 0.5, "final_metrics": last,
            "final_eval": {k: v for k, v in last_eval[-1].items() if k.startswith("eval/")} if last_eval else {},
        }))
    for c in checkpoints:
        ck = d / "checkpoints" / f"step-{c:06d}"
        ck.mkdir(parents=True)
        (ck / "trainer_state.json").write_text(json.dumps({"step": c}))
    for f in d.iterdir():
        if f.is_file():
            os.utime(f, (started, started))
    return d


def three_runs(root: Path) -> list[Path]:
    return [
        fake_run(root, "tiny-dpo-a", lr=5e-4, started=STARTED),
        fake_run(root, "tiny-dpo-b", lr=1e-3, started=STARTED + 600, loss0=0.9, status="cancelled", steps=12, checkpoints=(10, 12)),
        fake_run(root, "tiny-dpo-c", lr=1e-3, beta=0.1, started=STARTED + 1200, loss0=0.5, status=None, steps=7),
    ]


# ---------------------------------------------------------------- engine side


def test_runs_are_listed_newest_first_with_status_steps_and_final_metrics(tmp_path):
    three_runs(tmp_path)
    runs = list_runs(tmp_path, now=STARTED + 10_000)
    assert [r.id for r in runs] == ["tiny-dpo-c", "tiny-dpo-b", "tiny-dpo-a"]
    c, b, a = runs
    assert (a.status, a.steps, a.max_steps, a.algorithm, a.preset) == ("completed", 20, 20, "dpo", "tiny-dpo")
    assert a.final["loss"] == pytest.approx(0.7 * 0.9**20)
    assert a.headline_eval() == ("eval/rewards/accuracies", pytest.approx(0.9))
    assert b.status == "cancelled" and b.resumable and b.checkpoints == [10, 12]
    assert c.status == "interrupted" and c.steps == 7 and not c.resumable  # no summary, no checkpoint
    assert list_runs(tmp_path, now=STARTED + 1210)[0].status == "running"  # written 10 s ago


def test_config_diff_shows_only_the_keys_that_differ(tmp_path):
    a, b, c = three_runs(tmp_path)
    assert config_diff([a, b]) == [("train.learning_rate", [5e-4, 1e-3])]
    assert dict(config_diff([a, b, c])) == {"train.learning_rate": [5e-4, 1e-3, 1e-3], "dpo.beta": [0.3, 0.3, 0.1]}


def test_export_writes_csv_and_jsonl_next_to_the_run(tmp_path):
    a = fake_run(tmp_path, "run-a", steps=6)
    path = export_beside(a, "csv")
    assert path == a / "run-a-metrics.csv"
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 7  # 6 training rows and 1 eval row
    assert list(rows[0])[:2] == ["step", "elapsed_s"] and float(rows[0]["loss"]) == pytest.approx(0.7 * 0.9)
    ev = [r for r in rows if r["eval/rewards/accuracies"]][0]
    assert ev["step"] == "5" and float(ev["eval/rewards/accuracies"]) == pytest.approx(0.6) and ev["loss"] == ""
    lines = [json.loads(x) for x in export_beside(a, "jsonl").read_text().splitlines()]
    written = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 7 and lines == written  # the same rows as the run wrote them


# ---------------------------------------------------------------- the screens


def test_select_then_overlay_draws_one_line_per_run(tmp_path):
    three_runs(tmp_path)
    app = make_app(initial_screen=HistoryScreen(str(tmp_path)), runs_root=str(tmp_path))

    async def script(pilot):
        screen = app.screen
        assert [r.id for r in screen.runs] == ["tiny-dpo-c", "tiny-dpo-b", "tiny-dpo-a"]
        await pilot.press("o")  # nothing selected: a warning, no overlay
        await pilot.pause()
        assert not isinstance(app.screen, OverlayScreen)
        await pilot.press("space", "space")  # selects c and b (the cursor moves down)
        await pilot.pause()
        assert screen.selected == {"tiny-dpo-c", "tiny-dpo-b"}
        await pilot.press("o")
        await pilot.pause(0.3)
        overlay = app.screen
        assert isinstance(overlay, OverlayScreen)
        assert [p.name for p in overlay.run_dirs] == ["tiny-dpo-c", "tiny-dpo-b"]  # as listed
        loss = overlay.query_one("#overlay-loss", OverlayChart)
        assert loss.lines_drawn == 2
        assert overlay.eval_key == "eval/rewards/accuracies"
        assert overlay.query_one("#overlay-eval", OverlayChart).lines_drawn == 2  # c logged eval at step 5
        # the subtitle shows each run's last loss
        assert f"{0.9 * 0.9**12:.4g}" in str(loss.border_subtitle) and f"{0.5 * 0.9**7:.4g}" in str(loss.border_subtitle)

        def ema(values, w):  # TensorBoard's debiased EMA
            acc, out = 0.0, []
            for n, v in enumerate(values, 1):
                acc = acc * w + (1 - w) * v
                out.append(acc / (1 - w**n))
            return out

        raw_b = [0.9 * 0.9**s for s in range(1, 13)]
        assert loss.drawn[1].values == pytest.approx(ema(raw_b, 0.8))
        await pilot.press("m")  # 0.8 -> 0.9
        await pilot.pause()
        assert overlay.smoothing == 0.9 and loss.drawn[1].values == pytest.approx(ema(raw_b, 0.9))
        await pilot.press("m")  # 0.97, then 0: raw values
        await pilot.press("m")
        await pilot.pause()
        assert overlay.smoothing == 0 and loss.drawn[1].values == pytest.approx(raw_b)

    run_pilot(app, script)


def test_diff_only_view_lists_the_differing_keys(tmp_path):
    three_runs(tmp_path)
    app = make_app(initial_screen=HistoryScreen(str(tmp_path)), runs_root=str(tmp_path))

    async def script(pilot):
        await pilot.press("space", "space", "space", "d")
        await pilot.pause(0.2)
        diff = app.screen
        assert isinstance(diff, ConfigDiffScreen)
        assert [k for k, _ in diff.rows] == ["train.learning_rate", "dpo.beta"]
        table = diff.query_one("#diff-table")
        assert table.row_count == 2 + 5  # the differing keys, then status, steps, loss, reward and eval of each run
        assert [label for label, _ in diff.outcomes][:2] == ["→ status", "→ steps"]
        assert diff.outcomes[1][1] == ["7/20", "12/20", "20/20"]

    run_pilot(app, script)


def test_enter_reopens_the_charts_and_x_exports(tmp_path):
    a = fake_run(tmp_path, "tiny-dpo-a", steps=5)
    app = make_app(initial_screen=HistoryScreen(str(tmp_path)), runs_root=str(tmp_path))

    async def script(pilot):
        await pilot.press("x")
        await pilot.pause()
        assert (a / "tiny-dpo-a-metrics.csv").exists() and (a / "tiny-dpo-a-metrics.jsonl").exists()
        await pilot.press("enter")
        await pilot.pause(1.0)
        monitor = app.screen
        assert isinstance(monitor, MonitorScreen) and monitor.run_dir == str(a)
        for _ in range(50):
            if monitor.state.ended:
                break
            await pilot.pause(0.1)
        assert monitor.state.status == "completed" and monitor.state.step == 5

    run_pilot(app, script)


def test_resume_a_cancelled_run_trains_to_its_last_step(tmp_path):
    from engine.run import Run

    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=2, train__save_every=2, data__eval=""))
    run_dir = tmp_path / "runs" / "tiny-dpo-stopped"
    Run(cfg, out_dir=run_dir).run()
    # as if it had been cancelled at step 2 of 4
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps(summary | {"status": "cancelled", "max_steps": 4}))
    (run_dir / "config.toml").write_text((run_dir / "config.toml").read_text().replace("max_steps = 2", "max_steps = 4"))
    app = make_app(initial_screen=HistoryScreen(str(tmp_path / "runs")), runs_root=str(tmp_path / "runs"))

    async def script(pilot):
        screen = app.screen
        assert screen.runs[0].resumable
        await pilot.press("r")
        await pilot.pause(0.5)
        monitor = app.screen
        assert isinstance(monitor, MonitorScreen) and monitor.run is app.active_run
        deadline = time.monotonic() + 600
        while not monitor.state.ended and time.monotonic() < deadline:
            await pilot.pause(0.2)
        assert monitor.state.status == "completed"

    run_pilot(app, script)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(x)]
    assert steps[-2:] == [3, 4]


def test_empty_runs_folder_says_how_to_make_a_run(tmp_path):
    app = make_app(initial_screen=HistoryScreen(str(tmp_path / "none")), runs_root=str(tmp_path / "none"))

    async def script(pilot):
        text = str(app.screen.query_one("#history-summary").render())
        assert "No runs yet" in text

    run_pilot(app, script)


# ---------------------------------------------------------------- samples


def samples_file(run_dir: Path) -> Path:
    rows = [
        {"step": 1, "prompt": "sort: b a\n", "completion": "a b", "score": 1.0, "advantage": 0.5},
        {"step": 1, "prompt": "sort: c a b\n", "completion": "c a b", "score": 0.0, "advantage": -0.5},
        {"step": 2, "prompt": "sort: d c\n", "completion": "c d", "score": 1.0, "advantage": 0.25},
        {"step": 2, "prompt": "sort: z y x\n", "completion": "x x x", "score": -0.5, "advantage": -1.25},
    ]
    run_dir.mkdir(parents=True, exist_ok=True)
    return write_jsonl(run_dir / "samples.jsonl", rows)


def test_sample_filters_parse_scores_ranges_and_text():
    rows = [row_from({"step": 1, "prompt": "p", "completion": c, "score": s}, i) for i, (c, s) in enumerate([("a", 1.0), ("b", 0.0), ("c", -0.5), ("d", None)])]
    assert [r.completion for r in rows if parse_filter("> 0")[1](r)] == ["a"]
    assert [r.completion for r in rows if parse_filter("<=0")[1](r)] == ["b", "c"]
    assert [r.completion for r in rows if parse_filter("-1..0")[1](r)] == ["b", "c"]
    assert [r.completion for r in rows if parse_filter("b")[1](r)] == ["b"]
    assert parse_filter(">= 0.5")[0] == "score >= 0.5"
    assert [r.completion for r in order_rows(rows, "lowest score")] == ["c", "b", "a", "d"]
    assert [r.completion for r in order_rows(rows, "highest score")] == ["a", "b", "c", "d"]


def test_samples_view_reads_filters_and_follows_new_samples(tmp_path):
    run_dir = tmp_path / "grpo-run"
    path = samples_file(run_dir)
    app = make_app(initial_screen=SamplesScreen(run_dir=str(run_dir)))

    async def script(pilot):
        screen = app.screen
        table = screen.query_one("#samples")
        assert table.row_count == 4
        await pilot.press("slash", "<", " ", "0")
        await pilot.pause()
        assert [r.completion for r in screen.visible()] == ["x x x"]
        assert table.row_count == 1
        await pilot.press("escape")
        await pilot.pause()
        assert table.row_count == 4
        with path.open("a") as fh:  # the run writes another sample
            fh.write(json.dumps({"step": 3, "prompt": "sort: q p\n", "completion": "p q", "score": 1.0, "advantage": 0.1}) + "\n")
        await pilot.pause(SamplesScreen.POLL_S * 3)
        assert table.row_count == 5
        assert screen.visible()[0].completion == "p q"  # newest first

    run_pilot(app, script)


# ---------------------------------------------------------------- snapshots


@pytest.fixture
def fixed_runs():
    import shutil

    shutil.rmtree(FIXED, ignore_errors=True)
    three_runs(FIXED / "runs")
    yield FIXED / "runs"


def test_history_snapshot(snap_compare, fixed_runs):
    screen = HistoryScreen(str(fixed_runs), now=STARTED + 10_000)

    async def select(pilot):
        await pilot.press("down", "space")
        await pilot.pause()

    assert snap_compare(make_app(initial_screen=screen, runs_root=str(fixed_runs)), terminal_size=SIZE, run_before=select)


def test_overlay_snapshot(snap_compare, fixed_runs):
    screen = OverlayScreen([fixed_runs / "tiny-dpo-a", fixed_runs / "tiny-dpo-b", fixed_runs / "tiny-dpo-c"])
    assert snap_compare(make_app(initial_screen=screen), terminal_size=SIZE)


def test_config_diff_snapshot(snap_compare, fixed_runs):
    screen = ConfigDiffScreen([fixed_runs / "tiny-dpo-a", fixed_runs / "tiny-dpo-b", fixed_runs / "tiny-dpo-c"])
    assert snap_compare(make_app(initial_screen=screen), terminal_size=SIZE)


def test_samples_snapshot(snap_compare):
    run_dir = FIXED / "samples-run"
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    samples_file(run_dir)

    async def filt(pilot):
        await pilot.press("s", "s")  # highest score first
        await pilot.pause()

    assert snap_compare(make_app(initial_screen=SamplesScreen(run_dir=str(run_dir))), terminal_size=SIZE, run_before=filt)


def test_samples_view_shows_a_real_grpo_runs_samples(tmp_path):
    from engine.run import Run

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"sort: {' '.join(w)}\n"} for w in ("cab", "dba", "fed", "zyx")])
    cfg = load_preset("tiny-grpo", [f"data.train={prompts}", "data.eval=", "train.max_steps=1", "train.batch_size=2",
                                    "grpo.num_generations=2", "generation.max_new_tokens=8", "train.save_every=0", "train.eval_every=0"])
    run_dir = tmp_path / "grpo"
    Run(cfg, out_dir=run_dir).run()
    written = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert written, "a GRPO step writes its samples"
    app = make_app(initial_screen=SamplesScreen(run_dir=str(run_dir)))

    async def script(pilot):
        screen = app.screen
        assert len(screen.rows) == len(written)
        assert {(r.prompt, r.completion, r.score) for r in screen.rows} == {(w["prompt"], w["completion"], w["score"]) for w in written}

    run_pilot(app, script)


def test_question_mark_opens_help_on_every_new_screen(tmp_path):
    from rlhf_tui.screens.dialogs import HelpScreen
    from rlhf_tui.screens.inspector import InspectorScreen

    a, b, _ = three_runs(tmp_path)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "sort: b a\n", "chosen": "a b", "rejected": "b a"}])
    samples_file(tmp_path / "s")
    screens = [
        (HistoryScreen(str(tmp_path)), "Overlay"),
        (OverlayScreen([a, b]), "Back"),
        (ConfigDiffScreen([a, b]), "Back"),
        (SamplesScreen(run_dir=str(tmp_path / "s")), "Filter"),
        (InspectorScreen(data=str(pairs), count_tokens=False), "Score"),
    ]
    for screen, key_text in screens:
        app = make_app(initial_screen=screen)

        async def script(pilot, screen=screen, key_text=key_text):
            await pilot.press("question_mark")
            await pilot.pause(0.2)
            assert isinstance(pilot.app.screen, HelpScreen)
            text = pilot.app.screen.help_text
            assert screen.HELP_TITLE in text and key_text in text

        run_pilot(app, script)


def test_score_source_picker_snapshot(snap_compare, fixed_runs):
    from rlhf_tui.screens.inspector import InspectorScreen

    pairs = write_jsonl(FIXED / "pairs.jsonl", [{"prompt": "sort: b a\n", "chosen": "a b", "rejected": "b a"}])
    screen = InspectorScreen(data=str(pairs), count_tokens=False)

    async def pick(pilot):
        await pilot.press("c")
        await pilot.pause()

    assert snap_compare(make_app(initial_screen=screen, runs_root=str(fixed_runs)), terminal_size=SIZE, run_before=pick)


def test_samples_view_follows_a_run_training_in_the_app(tmp_path):
    from engine.run import Run

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"sort: {' '.join(w)}\n"} for w in ("cab", "dba", "fed", "zyx")])
    cfg = load_preset("tiny-grpo", [f"data.train={prompts}", "data.eval=", "train.max_steps=2", "train.batch_size=2",
                                    "grpo.num_generations=2", "generation.max_new_tokens=8", "train.save_every=0", "train.eval_every=0"])
    run = Run(cfg, out_dir=tmp_path / "live")  # not started: no folder yet
    app = make_app(initial_screen=SamplesScreen(run=run))

    async def script(pilot):
        screen = app.screen
        assert not screen.rows and "waiting" in str(screen.query_one("#samples").border_subtitle)
        run.start()
        deadline = time.monotonic() + 600
        while run.running and time.monotonic() < deadline:
            await pilot.pause(0.2)
        await pilot.pause(SamplesScreen.POLL_S * 3)
        written = [json.loads(x) for x in (tmp_path / "live" / "samples.jsonl").read_text().splitlines()]
        assert len(screen.rows) == len(written) > 0
        assert {r.step for r in screen.rows} == {1, 2}

    run_pilot(app, script)
    run.join()
