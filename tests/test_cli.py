"""The headless CLI: progress, exit codes, and one-line errors for bad input (no traceback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, cli, quick_overrides, write_jsonl


def _sets(overrides):
    out = []
    for o in overrides:
        out += ["--set", o]
    return out


def test_run_prints_progress_and_summary(tmp_path):
    out = cli("run", "tiny-dpo", *_sets(quick_overrides(tmp_path, steps=3, train__eval_every=3)), "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "step     3/3" in out.stdout and "eval/rewards/accuracies" in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("completed: 3 steps")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "completed"


def test_presets_lists_builtins():
    out = cli("presets")
    assert out.returncode == 0
    assert "tiny-dpo" in out.stdout and "built-in" in out.stdout


def _bad(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text('algorithm = "dpo"\n[train\n')
    bad_data = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "a", "chosen": "b", "rejected": "c"}', "{not json"])
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    incomplete = tmp_path / "model"
    incomplete.mkdir()
    (incomplete / "config.json").write_text("{}")
    return {
        "unknown preset": (["run", "tiny-dpx"], ["unknown preset 'tiny-dpx'", "did you mean 'tiny-dpo'"]),
        "unknown key": (["run", "tiny-dpo", "--set", "train.lr=1"], ["unknown key 'train.lr'"]),
        "wrong type": (["run", "tiny-dpo", "--set", "train.batch_size=big"], ["train.batch_size = 'big'", "an integer"]),
        "out of range": (["run", "tiny-dpo", "--set", "dpo.beta=-1"], ["dpo.beta = '-1'", "[0, 100]"]),
        "unknown algorithm": (["run", "tiny-dpo", "--set", "algorithm=kto2"], ["algorithm = 'kto2'", "'dpo'"]),
        "toml syntax": (["run", str(broken)], [str(broken), "TOML syntax error", "line 2"]),
        "malformed data": (["run", "tiny-dpo", "--set", f"data.train={bad_data}"], [f"{bad_data}:2: invalid JSON"]),
        "missing model": (["run", "tiny-dpo", "--set", f"model.path={tmp_path}/nope"], [f"{tmp_path}/nope: model folder not found"]),
        "incomplete model": (["run", "tiny-dpo", "--set", f"model.path={incomplete}"], [f"{incomplete}: incomplete model folder", "*.safetensors", "tokenizer.json"]),
        "unwritable out": (["run", "tiny-dpo", "--out", str(a_file / "sub")], [str(a_file / "sub"), "cannot create the output directory"]),
        "missing run dir": (["resume", str(tmp_path / "nowhere")], [str(tmp_path / "nowhere"), "run directory not found"]),
    }


CASES = ["unknown preset", "unknown key", "wrong type", "out of range", "unknown algorithm", "toml syntax",
         "malformed data", "missing model", "incomplete model", "unwritable out", "missing run dir"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, case):
    args, fragments = _bad(tmp_path)[case]
    out = cli(*args, timeout=120)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    error_lines = [line for line in out.stderr.splitlines() if line.startswith("rlhf-tui: error:")]
    assert len(error_lines) == 1, out.stderr
    for f in fragments:
        assert f in error_lines[0], (f, error_lines[0])
    assert "step None" not in out.stderr  # a run that failed before its first checkpoint says so


def test_debug_shows_the_traceback(tmp_path):
    out = cli("run", "tiny-dpo", "--set", "train.lr=1", "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_sigint_checkpoints_and_exits_130(tmp_path):
    run_dir = tmp_path / "r"
    args = [sys.executable, "-m", "rlhf_tui", "run", "tiny-dpo", *_sets(quick_overrides(tmp_path, steps=5000)), "--out", str(run_dir)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.time() + 600
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().count("\n") >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "cancelled"
    assert (run_dir / "checkpoints" / f"step-{summary['steps']:06d}" / "trainer_state.json").exists()
