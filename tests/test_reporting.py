"""report.to: TensorBoard event files hold what metrics.jsonl holds (read back with TensorBoard's
own reader); a missing tracker package is a one-line error naming the extra; a tracker that
breaks is switched off with one alert and the run goes on; export --format tensorboard."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from engine import events as ev
from engine.config import parse_override
from engine.presets import builtin_dir, load_preset
from engine.run import Run
from tests.helpers import cli, metrics_rows, quick_overrides

pytest.importorskip("tensorboard")  # in the dev group; users get it with uv sync --extra tensorboard


def grpo_overrides(tmp_path: Path, steps: int = 2) -> list[str]:
    """A tiny GRPO run: it logs train rows, eval rows and samples."""
    base = [o for o in quick_overrides(tmp_path, steps=steps) if not o.startswith(("data.train=", "data.eval="))]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join((builtin_dir() / "data" / "sort_prompts.jsonl").read_text().splitlines(keepends=True)[:16]))
    return base + [f"data.train={prompts}", f"data.eval={prompts}", "data.max_eval_examples=4", "train.eval_every=1",
                   "generation.max_new_tokens=6", "grpo.num_generations=4", "train.batch_size=2"]


def accumulate(logdir: Path):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def expected_scalars(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as TensorBoard should hold it: every number but step and elapsed_s, as float32."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "elapsed_s") or value is None or isinstance(value, bool):
                continue
            out.setdefault(key, []).append((row["step"], float(np.float32(value))))
    return out


def tensorboard_scalars(acc) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def text_of(acc, tag: str) -> list[tuple[int, str]]:
    from tensorboard.util import tensor_util

    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in acc.Tensors(tag)]


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory) -> tuple[Path, list[ev.Event]]:
    tmp = tmp_path_factory.mktemp("report")
    cfg = load_preset("tiny-grpo", [*grpo_overrides(tmp), "report.to=tensorboard"])
    run = Run(cfg, out_dir=tmp / "run")
    seen: list[ev.Event] = []
    run.subscribe(seen.append)
    assert run.run()["status"] == "completed", run.summary.get("error")
    return tmp / "run", seen


def test_both_set_forms_and_toml_lists_parse():
    assert parse_override("report.to=tensorboard") == ("report.to", ("tensorboard",))
    assert parse_override('report.to=["tensorboard","wandb"]') == ("report.to", ("tensorboard", "wandb"))
    assert parse_override("report.to=trackio, wandb") == ("report.to", ("trackio", "wandb"))
    assert parse_override("report.to=") == ("report.to", ())
    from engine.config import config_from_dict

    assert config_from_dict({"report": {"to": ["wandb", "tensorboard"]}}).report.to == ("wandb", "tensorboard")
    with pytest.raises(Exception, match=r"report\.to = 'mlflow' .*'tensorboard', 'wandb', 'trackio'"):
        parse_override("report.to=mlflow")


def test_tensorboard_files_hold_the_same_scalars_as_metrics_jsonl(grpo_run):
    run_dir, seen = grpo_run
    rows = metrics_rows(run_dir)
    assert any("eval/reward" in r for r in rows) and any("loss" in r for r in rows)
    acc = accumulate(run_dir / "tensorboard")
    got = tensorboard_scalars(acc)
    want = expected_scalars(rows)
    assert set(got) == set(want)  # the same names: loss, kl, ..., eval/... (no renaming)
    assert "eval/reward" in got and "rewards/accuracies" not in got  # GRPO's own keys, as in metrics.jsonl
    for tag, points in want.items():
        assert got[tag] == points, tag
    samples = text_of(acc, "samples")
    written = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s for s, _ in samples] == sorted({s["step"] for s in written})
    first = samples[0][1]
    assert written[0]["completion"].replace("\n", "⏎ ") in first and "| score |" in first
    config = text_of(acc, "config")
    assert '"algorithm": "grpo"' in config[0][1]
    assert not [e for e in seen if isinstance(e, ev.Alert)]


def test_export_writes_the_same_scalars_for_a_finished_run(grpo_run, tmp_path):
    run_dir, _ = grpo_run
    out = cli("export", str(run_dir), "--format", "tensorboard")
    assert out.returncode == 2 and "already holds event files" in out.stderr and "--output" in out.stderr
    out = cli("export", str(run_dir), "--format", "tensorboard", "--output", str(tmp_path / "tb"))
    assert out.returncode == 0, out.stderr
    exported = accumulate(tmp_path / "tb")
    assert tensorboard_scalars(exported) == expected_scalars(metrics_rows(run_dir))
    assert [s for s, _ in text_of(exported, "samples")] == [s for s, _ in text_of(accumulate(run_dir / "tensorboard"), "samples")]
    again = cli("export", str(run_dir), "--format", "tensorboard", "--output", str(tmp_path / "tb"))
    assert again.returncode == 0, again.stderr
    assert len(list((tmp_path / "tb").iterdir())) == 1  # a second export replaces the first


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_a_tracker_that_is_not_installed_is_one_line_naming_the_extra(tmp_path, name):
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed here: nothing to refuse")
    out = cli("run", "tiny-sft", "--set", f"report.to=tensorboard,{name}", "--out", str(tmp_path / "run"))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"uv sync --extra {name}" in lines[0] and "report.to" in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "config.toml").exists()  # refused before the model (or the run directory)


def test_a_broken_tracker_is_switched_off_with_one_alert_and_the_run_goes_on(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "tensorboard").write_text("a file where the event folder should go")  # the writer cannot start
    cfg = load_preset("tiny-sft", [*quick_overrides(tmp_path, steps=3), "report.to=tensorboard"])
    run = Run(cfg, out_dir=run_dir)
    alerts: list[ev.Alert] = []
    run.subscribe(lambda e: alerts.append(e) if isinstance(e, ev.Alert) else None)
    assert run.run()["status"] == "completed"
    assert len(alerts) == 1 and "tensorboard switched off" in alerts[0].text
    assert [r["step"] for r in metrics_rows(run_dir) if "loss" in r] == [1, 2, 3]
    logged = [json.loads(line) for line in (run_dir / "events.log").read_text().splitlines()]
    assert sum(e["event"] == "Alert" for e in logged) == 1


def test_the_editor_takes_report_to_as_a_comma_list():
    import asyncio

    from textual.widgets import Input

    from rlhf_tui.app import make_app
    from rlhf_tui.screens.editor import EditorScreen

    async def scenario() -> None:
        app = make_app("tiny-dpo")
        async with app.run_test(size=(140, 42)) as pilot:
            await pilot.pause()
            await pilot.press("e")
            await pilot.pause()
            editor = app.screen
            assert isinstance(editor, EditorScreen)
            for _ in range(200):  # sections are mounted one per frame after the screen shows
                if editor.query("#section-report"):
                    break
                await pilot.pause(0.05)
            section = editor.query_one("#section-report")
            section.collapsed = False  # folded sections build their rows when opened
            await pilot.pause(0.3)
            field = editor.query_one("#f--report--to", Input)  # a text field, not a one-of select
            assert field.value == ""
            field.value = "tensorboard, wandb"
            await pilot.pause()
            assert editor.cfg.report.to == ("tensorboard", "wandb")
            field.value = "tensorboard, mlflow"
            await pilot.pause()
            assert "report.to" in editor.invalid and editor.cfg.report.to == ("tensorboard", "wandb")

    asyncio.run(scenario())


def test_wandb_goes_offline_without_a_login_and_respects_wandb_mode(monkeypatch, tmp_path):
    from engine.reporting import wandb_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode() == "offline"  # not logged in: never tries the network
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"  # the user's choice wins
