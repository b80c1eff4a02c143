"""The public Python API (``import engine``): what a script or notebook user relies on."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engine
from tests.helpers import ROOT, cli

TRAIN = ROOT / "presets" / "data" / "sort_train.jsonl"
EVAL = ROOT / "presets" / "data" / "sort_eval.jsonl"


def small_data(tmp: Path, n_train: int = 48, n_eval: int = 24) -> tuple[Path, Path]:
    """A slice of the bundled data, so each run here costs a few seconds."""
    train, evl = tmp / "train.jsonl", tmp / "eval.jsonl"
    train.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:n_train]))
    evl.write_text("".join(EVAL.read_text().splitlines(keepends=True)[:n_eval]))
    return train, evl


def small_overrides(tmp: Path, steps: int = 3) -> list[str]:
    train, evl = small_data(tmp)
    return [
        f"train.max_steps={steps}",
        "train.batch_size=8",
        f"data.train={train}",
        f"data.eval={evl}",
        "train.eval_every=0",
    ]


def test_import_engine_is_light():
    code = "import sys, engine\nprint(sorted(m for m in ('mlx', 'mlx_lm', 'textual', 'rich', 'engine.run') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves_and_is_documented():
    assert set(engine.__all__) == set(engine._EXPORTS)
    for name in engine.__all__:
        obj = getattr(engine, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"engine.{name} has no docstring"
    for name in ("load_preset", "Run", "train", "stream", "read_metrics", "score_pairs", "StepMetrics", "ConfigError"):
        assert name in dir(engine)
    with pytest.raises(AttributeError):
        engine.not_a_thing  # noqa: B018


def test_config_in_code_is_validated_with_the_key_named():
    cfg = engine.load_preset("tiny-dpo", overrides=["dpo.beta=0.2"])
    assert cfg.algorithm == "dpo" and cfg.dpo.beta == 0.2
    engine.set_value(cfg, "train.max_steps", 7)
    assert engine.get_value(cfg, "train.max_steps") == 7 == cfg.train.max_steps
    with pytest.raises(engine.ConfigError, match=r"train\.learning_rate.*-1"):
        engine.set_value(cfg, "train.learning_rate", -1.0)
    with pytest.raises(engine.ConfigError, match="did you mean 'dpo.beta'"):
        engine.load_preset("tiny-dpo", overrides=["dpo.betta=1"])
    built = engine.config_from_dict({"algorithm": "sft", "train": {"max_steps": 5}})
    assert built.algorithm == "sft" and built.train.max_steps == 5 and built.model.path == "builtin:tiny-sorter"


def test_stream_yields_the_run_in_order_and_matches_the_run_directory(tmp_path):
    cfg = engine.load_preset("tiny-dpo", overrides=small_overrides(tmp_path, steps=3))
    run = engine.Run(cfg, out_dir=tmp_path / "run")
    events = list(engine.stream(run))

    kinds = [type(e) for e in events]
    assert kinds[0] in (engine.PhaseChanged, engine.RunStarted)
    assert isinstance(events[-1], engine.RunFinished) and run.status == "completed"
    assert kinds.index(engine.RunStarted) < kinds.index(engine.StepMetrics)
    steps = [e.step for e in events if isinstance(e, engine.StepMetrics)]
    assert steps == [1, 2, 3]

    streamed = [e.metrics for e in events if isinstance(e, engine.StepMetrics)]
    on_disk = engine.read_metrics(tmp_path / "run")
    assert [r["step"] for r in on_disk] == [1, 2, 3]
    for live, saved in zip(streamed, on_disk, strict=True):  # the same floats: JSON round-trips them exactly
        assert saved["loss"] == live["loss"]
        assert saved["rewards/accuracies"] == live["rewards/accuracies"]
    evals = engine.read_metrics(tmp_path / "run", "eval")
    assert [e["step"] for e in evals] == [0, 3] and "eval/rewards/accuracies" in evals[-1]  # step 0: the starting model
    assert len(engine.read_metrics(tmp_path / "run", "all")) == 5
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert run.summary["final_eval"]["eval/rewards/accuracies"] == evals[-1]["eval/rewards/accuracies"]


def test_train_gives_the_same_numbers_as_the_cli(tmp_path):
    overrides = small_overrides(tmp_path, steps=2)
    run = engine.train("tiny-dpo", overrides=overrides, out_dir=tmp_path / "api")
    assert run.status == "completed"
    args = ["run", "tiny-dpo", "--out", str(tmp_path / "cli"), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    api_rows = engine.read_metrics(tmp_path / "api", "all")
    cli_rows = engine.read_metrics(tmp_path / "cli", "all")
    assert len(api_rows) == len(cli_rows) == 4  # eval at step 0, steps 1-2, eval at step 2
    for a, c in zip(api_rows, cli_rows, strict=True):
        for key in ("loss", "kl", "reward", "rewards/margins", "eval/loss"):
            if key in a:
                assert a[key] == pytest.approx(c[key], rel=1e-4, abs=1e-6), key
    assert (tmp_path / "api" / "config.toml").read_text() == (tmp_path / "cli" / "config.toml").read_text()


def test_cancel_from_the_event_loop_leaves_a_checkpoint(tmp_path):
    cfg = engine.load_preset("tiny-dpo", overrides=small_overrides(tmp_path, steps=50))
    run = engine.Run(cfg, out_dir=tmp_path / "run")
    seen = []
    for event in engine.stream(run):
        seen.append(event)
        if isinstance(event, engine.StepMetrics) and event.step == 2:
            run.cancel()
    assert isinstance(seen[-1], engine.RunCancelled) and run.status == "cancelled"
    assert run.step < 50
    directory = engine.RunDirectory(tmp_path / "run")
    assert directory.latest_checkpoint()[0] == run.step
    assert engine.adapter_path(tmp_path / "run") == directory.latest_checkpoint()[1]  # the cancel's checkpoint


def test_leaving_the_loop_early_cancels_the_run(tmp_path):
    cfg = engine.load_preset("tiny-dpo", overrides=small_overrides(tmp_path, steps=50))
    run = engine.Run(cfg, out_dir=tmp_path / "run")
    for event in engine.stream(run):
        if isinstance(event, engine.StepMetrics):
            break
    assert run.status == "cancelled" and not run.running
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "cancelled"


def test_pause_holds_the_step_until_resumed(tmp_path):
    cfg = engine.load_preset("tiny-dpo", overrides=small_overrides(tmp_path, steps=4))
    run = engine.Run(cfg, out_dir=tmp_path / "run")
    order, last_step = [], 0
    for event in engine.stream(run, timeout=120):
        order.append(type(event).__name__)
        if isinstance(event, engine.StepMetrics):
            last_step = event.step
            if event.step == 1:
                run.pause()  # takes effect at the engine's next check, between steps
        elif isinstance(event, engine.RunPaused):
            assert event.step == last_step == run.step and run.status == "paused"
            time.sleep(0.3)
            assert run.step == event.step  # no step while paused
            run.resume()
    assert run.status == "completed"
    paused_at = order.index("RunPaused")
    assert order.index("RunResumed") == paused_at + 1  # nothing trained in between
    assert [e for e in order if e == "StepMetrics"] == ["StepMetrics"] * 4


def test_a_failed_run_reports_instead_of_raising(tmp_path):
    missing = tmp_path / "nope.jsonl"
    run = engine.train("tiny-dpo", overrides=[f"data.train={missing}", "train.max_steps=2"], out_dir=tmp_path / "run")
    assert run.status == "failed"
    assert str(missing) in run.summary["error"]


def test_read_metrics_of_a_missing_run_names_it(tmp_path):
    with pytest.raises(engine.RunDirError, match="nowhere"):
        engine.read_metrics(tmp_path / "nowhere")


def test_use_fast_blas_restarts_a_script_with_openblas(tmp_path):
    from engine.blas import openblas_library

    script = tmp_path / "script.py"
    script.write_text("import os, engine\nengine.use_fast_blas()\nprint(os.environ.get('LD_PRELOAD', ''))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "RLHF_TUI_FAST_BLAS", "RLHF_TUI_NO_FAST_BLAS")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    lib = openblas_library()
    assert out.stdout.strip() == (str(lib) if lib else "")
    opted_out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env | {"RLHF_TUI_NO_FAST_BLAS": "1"})
    assert opted_out.stdout.strip() == ""


def test_ctrl_c_during_train_cancels_with_a_checkpoint_then_raises(tmp_path):
    overrides = small_overrides(tmp_path, steps=200)
    script = tmp_path / "script.py"
    script.write_text(
        "import os, signal, sys, engine\n"
        "def on_event(e):\n"
        "    if isinstance(e, engine.StepMetrics) and e.step == 2:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "try:\n"
        f"    engine.train('tiny-dpo', overrides={overrides!r}, out_dir=sys.argv[1], on_event=on_event)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0 and out.stdout.strip() == "interrupted", out.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "cancelled" and 2 <= summary["steps"] < 200
    assert engine.RunDirectory(tmp_path / "run").latest_checkpoint()[0] == summary["steps"]
