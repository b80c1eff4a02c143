"""Fault injection: crash, corrupt and starve a run directory, then resume it (issue 21).

Every fault below is followed by recovery (``rlhf-tui resume``, or a rerun when the fault
struck before anything was trained) and the same verdict: the run completes, its
``metrics.jsonl`` has every step exactly once (no gap, no duplicate, no torn line), its
weights equal those of a straight run with no fault (so they came from an intact
checkpoint, not a torn one) and its last checkpoint's manifest checks out. A fault whose
run fails that verdict counts as a run lost; each test asserts none was.

Faults: kill -9 of a headless ``rlhf-tui`` process at fixed moments (half a metrics row
written, half a checkpoint written, between a checkpoint's rename and the run root's copy
of its weights, after an update nothing recorded yet) and at random ones; a second and a
third writer while the first holds the directory; truncated and bit-flipped checkpoint
files; ``ENOSPC`` on each kind of write the run directory makes. Uses the built-in tiny
SFT preset on 64 pairs with a few steps.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest

from engine import events as ev
from engine.presets import load_preset
from engine.run import Run, resume_run
from engine.rundir import check_checkpoint, read_jsonl
from tests.helpers import ROOT, quick_overrides

STEPS = 12  # every scenario trains to this step
SEED = 2126  # random moments and random bytes are drawn from this


def _overrides(folder: Path, steps: int = STEPS) -> list[str]:
    return quick_overrides(
        folder, steps=steps, train__save_every=2, train__eval_on_start="false", train__log_every=1,
        model__adapter="lora", train__learning_rate=1e-3, data__max_eval_examples=8,
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """The same run with no fault: its weights and per-step losses are the yardstick."""
    folder = tmp_path_factory.mktemp("straight")
    run = Run(load_preset("tiny-sft", _overrides(folder)), out_dir=folder / "run")
    assert run.run()["status"] == "completed"
    rows = read_jsonl(folder / "run" / "metrics.jsonl")
    return {
        "folder": folder,
        "weights": dict(mx.load(str(folder / "run" / "adapters.safetensors"))),
        "loss": {r["step"]: r["loss"] for r in rows if "loss" in r},
    }


def verdict(run_dir: Path, straight: dict, steps: int = STEPS) -> list[str]:
    """What is wrong with a recovered run (empty: nothing; the run was not lost)."""
    problems = []
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    if summary.get("status") != "completed" or summary.get("steps") != steps:
        problems.append(f"summary: {summary.get('status')} at step {summary.get('steps')} ({summary.get('error')})")
    raw = (run_dir / "metrics.jsonl").read_bytes()
    lines = raw.decode("utf-8", "replace").splitlines()
    if not raw.endswith(b"\n") or any(not line.startswith("{") or not line.endswith("}") for line in lines):
        problems.append("metrics.jsonl has a torn line")
    rows = [json.loads(line) for line in lines if line.strip()]
    train = [r["step"] for r in rows if "loss" in r]
    evals = [r["step"] for r in rows if any(k.startswith("eval/") for k in r)]
    if train != list(range(1, steps + 1)):
        problems.append(f"training rows are not steps 1..{steps} once each: {train}")
    if len(evals) != len(set(evals)):
        problems.append(f"duplicate eval rows: {evals}")
    for r in rows:  # rows written after a resume are the straight run's rows
        if "loss" in r and r["loss"] != pytest.approx(straight["loss"][r["step"]], rel=0.03, abs=1e-3):
            problems.append(f"step {r['step']}: loss {r['loss']} where the straight run had {straight['loss'][r['step']]}")
            break
    last = run_dir / "checkpoints" / f"step-{steps:06d}"
    ok, why = check_checkpoint(last) if last.is_dir() else ("bad", "missing")
    if ok != "ok":
        problems.append(f"last checkpoint: {why}")
    for source in (run_dir / "adapters.safetensors", last / "adapters.safetensors"):
        try:
            got = mx.load(str(source))
        except Exception as err:  # noqa: BLE001
            problems.append(f"{source.name}: {err}")
            continue
        for k, want in straight["weights"].items():
            if k not in got or not mx.allclose(got[k], want, rtol=1e-3, atol=1e-5).item():
                problems.append(f"{source.relative_to(run_dir)}: {k} differs from the straight run")
                break
    return problems


def recover(run_dir: Path, folder: Path, attempts: int = 2) -> None:
    """What a user does after a fault: resume (or, when nothing was recorded yet, run again)."""
    for _ in range(attempts):
        if (run_dir / "config.toml").exists():
            run = resume_run(run_dir)
        else:
            run = Run(load_preset("tiny-sft", _overrides(folder)), out_dir=run_dir)
        if run.run()["status"] == "completed":
            return


def _flip_bit(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def _truncate(path: Path, rng: random.Random) -> None:
    os.truncate(path, rng.randrange(path.stat().st_size))


# ------------------------------------------------------------------ damaged checkpoints


def test_truncated_and_bit_flipped_checkpoints(tmp_path, straight):
    """Damage the newest checkpoint (or the two newest) in each way; resume takes an intact one."""
    rng = random.Random(SEED)
    base = tmp_path / "base"
    assert Run(load_preset("tiny-sft", _overrides(tmp_path)), out_dir=base).run()["status"] == "completed"
    newest = f"checkpoints/step-{STEPS:06d}"
    older = f"checkpoints/step-{STEPS - 2:06d}"
    damage: dict[str, Callable[[Path], None]] = {
        "adapters truncated": lambda d: _truncate(d / newest / "adapters.safetensors", rng),
        "adapters bit-flipped": lambda d: _flip_bit(d / newest / "adapters.safetensors", rng),
        "optimizer truncated to nothing": lambda d: os.truncate(d / newest / "optimizer.safetensors", 0),
        "optimizer bit-flipped": lambda d: _flip_bit(d / newest / "optimizer.safetensors", rng),
        "trainer_state bit-flipped": lambda d: _flip_bit(d / newest / "trainer_state.json", rng),
        "manifest truncated": lambda d: _truncate(d / newest / "manifest.json", rng),
        "adapters deleted": lambda d: (d / newest / "adapters.safetensors").unlink(),
        "no manifest and torn (an old checkpoint)": lambda d: ((d / newest / "manifest.json").unlink(), _truncate(d / newest / "adapters.safetensors", rng)),
        "two newest damaged, run root too": lambda d: (
            _flip_bit(d / newest / "adapters.safetensors", rng),
            _truncate(d / older / "optimizer.safetensors", rng),
            _flip_bit(d / "adapters.safetensors", rng),
        ),
    }
    lost = {}
    for name, hurt in damage.items():
        run_dir = tmp_path / name.replace(" ", "-")
        shutil.copytree(base, run_dir)
        hurt(run_dir)
        resumed = resume_run(run_dir)
        said = []
        resumed.subscribe(lambda e, said=said: said.append(e.text) if isinstance(e, ev.LogLine) else None)
        resumed.run()
        problems = verdict(run_dir, straight)
        if not any(line.startswith(f"skipped checkpoint step-{STEPS:06d}: ") for line in said):
            problems.append(f"the damaged checkpoint was not reported: {said}")
        if problems:
            lost[name] = problems
    print(f"\nfaults injected: {len(damage)} damaged checkpoints; runs lost: {len(lost)}")
    assert not lost


# ------------------------------------------------------------------ a full disk


class DiskFull:
    """Writes to files ``target(path)`` picks fail with ENOSPC while ``armed`` (half the bytes of an
    append reach the disk first, as a full disk does). Covers every write function the run
    directory uses: os.write, open().write, Path.write_text and mx.save_safetensors."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: Callable[[str], bool]) -> None:
        self.armed = False
        self.hits = 0
        full = self

        def hit(path: str) -> bool:
            if full.armed and target(path):
                full.hits += 1
                return True
            return False

        def enospc() -> OSError:
            return OSError(errno.ENOSPC, "No space left on device")

        real_write = os.write

        def write(fd: int, data: bytes) -> int:
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            if hit(path):
                real_write(fd, bytes(data)[: len(data) // 2])
                raise enospc()
            return real_write(fd, data)

        real_open = builtins.open

        class Starved:
            def __init__(self, fh) -> None:  # noqa: ANN001
                self.fh = fh

            def write(self, data):  # noqa: ANN001, ANN202
                raise enospc()

            def __getattr__(self, name: str):  # noqa: ANN204
                return getattr(self.fh, name)

            def __enter__(self):  # noqa: ANN204
                return self

            def __exit__(self, *exc: object) -> None:
                self.fh.close()

        def open_(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN202
            fh = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax") and hit(str(file)):
                return Starved(fh)
            return fh

        real_write_text = Path.write_text

        def write_text(self: Path, data: str, *args, **kwargs) -> int:  # noqa: ANN002, ANN003
            if hit(str(self)):
                raise enospc()
            return real_write_text(self, data, *args, **kwargs)

        real_save = mx.save_safetensors

        def save(path, arrays, *args, **kwargs):  # noqa: ANN001, ANN202
            if hit(str(path)):
                real_save(path, arrays, *args, **kwargs)
                os.truncate(path, os.path.getsize(path) // 2)
                raise enospc()
            return real_save(path, arrays, *args, **kwargs)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(Path, "write_text", write_text)
        monkeypatch.setattr(mx, "save_safetensors", save)


# what is written: (which files, the disk is full once this step's metrics row is out; None: from the start)
FULL_DISK = {
    "metrics row": (lambda p: p.endswith("/metrics.jsonl"), 4),
    "event line": (lambda p: p.endswith("/events.log"), 3),
    "config.toml": (lambda p: ".config.toml.tmp-" in p, None),
    "lock file": (lambda p: p.endswith("/run.lock"), None),
    "checkpoint weights": (lambda p: "/.tmp-step-" in p and p.endswith("/adapters.safetensors"), 3),
    "checkpoint optimizer state": (lambda p: "/.tmp-step-" in p and p.endswith("/optimizer.safetensors"), 5),
    "checkpoint trainer_state.json": (lambda p: "/.tmp-step-" in p and p.endswith("/trainer_state.json"), 7),
    "checkpoint manifest": (lambda p: "/.tmp-step-" in p and "manifest.json" in p, 3),
    "run root's copy of the weights": (lambda p: "/.adapters.safetensors.tmp-" in p, 5),
    "summary.json": (lambda p: ".summary.json.tmp-" in p, STEPS),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(FULL_DISK))
def test_a_full_disk_on_each_kind_of_write(tmp_path, monkeypatch, straight, kind):
    target, after_step = FULL_DISK[kind]
    run_dir = tmp_path / "run"
    full = DiskFull(monkeypatch, target)
    full.armed = after_step is None
    run = Run(load_preset("tiny-sft", _overrides(tmp_path)), out_dir=run_dir)

    def arm(e: ev.Event) -> None:
        if isinstance(e, ev.StepMetrics) and after_step is not None and e.step >= after_step:
            full.armed = True

    run.subscribe(arm)
    run.run()
    assert full.hits, f"the full disk never struck the {kind}"
    full.armed = False  # space freed
    if run.status == "failed":
        assert "No space left on device" in run.summary["error"]
    recover(run_dir, tmp_path)
    problems = verdict(run_dir, straight)
    events = (run_dir / "events.log").read_text().splitlines()
    if not all(line.startswith("{") and line.endswith("}") for line in events):
        problems.append("events.log has a torn line")
    print(f"\nfault injected: ENOSPC on the {kind} ({run.status}); run lost: {bool(problems)}")
    assert not problems


def test_a_full_disk_while_resume_trims_the_metrics(tmp_path, monkeypatch, straight):
    """The resume's own first write fails: the record stays as it was, and the next resume works."""
    run_dir = tmp_path / "run"
    first = Run(load_preset("tiny-sft", _overrides(tmp_path, steps=6)), out_dir=run_dir)
    assert first.run()["status"] == "completed"
    before = {n: (run_dir / n).read_bytes() for n in ("summary.json", "metrics.jsonl", "config.toml")}
    full = DiskFull(monkeypatch, lambda p: ".metrics.jsonl.tmp-" in p)
    full.armed = True
    failed = resume_run(run_dir, [f"train.max_steps={STEPS}"])
    assert failed.run()["status"] == "failed" and full.hits
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["status"] == "completed" and after["steps"] == 6
    assert [a["status"] for a in after["attempts"]] == ["failed"]
    assert (run_dir / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
    assert (run_dir / "config.toml").read_bytes() == before["config.toml"]
    full.armed = False
    assert resume_run(run_dir, [f"train.max_steps={STEPS}"]).run()["status"] == "completed"
    assert not verdict(run_dir, straight)
    print("\nfault injected: ENOSPC on the resume's metrics trim; run lost: False")


# ------------------------------------------------------------------ kill -9 and concurrent writers

# A headless rlhf-tui process with a fault hook; FAULT=kind:step kills it with SIGKILL at that
# moment of that step (or, for "hold", stops it there until the test kills it).
CHILD = r"""
import json, os, signal, sys, time
import engine.blas
engine.blas.reexec_with_fast_blas = lambda *a, **k: None  # keep this process and its hooks
kind, _, at = os.environ.get("FAULT", "").partition(":")
at = int(at or 0)
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if kind == "append":  # half of step `at`'s metrics row reaches the file
    from engine.rundir import RunDirectory
    real_append = RunDirectory.append_metrics
    def append_metrics(self, row):
        if row.get("step") == at and "loss" in row:
            line = json.dumps(row).encode()
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, line[: len(line) // 2])
            die()
        return real_append(self, row)
    RunDirectory.append_metrics = append_metrics
elif kind == "checkpoint":  # checkpoint `at` half written (its optimizer state torn)
    import mlx.core as mx
    real_save = mx.save_safetensors
    def save(path, arrays, *a, **k):
        real_save(path, arrays, *a, **k)
        if f"tmp-step-{at:06d}" in str(path) and "optimizer" in str(path):
            os.truncate(path, os.path.getsize(path) // 2)
            die()
    mx.save_safetensors = save
elif kind == "mirror":  # checkpoint `at` in place, the run root's copy of its weights half written
    import engine.rundir as rd
    real_awb = rd.atomic_write_bytes
    def awb(path, data, **k):
        if path.name == "adapters.safetensors" and path.parent.name != f"step-{at:06d}" and (path.parent / "checkpoints" / f"step-{at:06d}").exists():
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(data[: len(data) // 2])
            die()
        return real_awb(path, data, **k)
    rd.atomic_write_bytes = awb
elif kind in ("update", "hold"):  # step `at` under way (hold) or its update applied (update), nothing recorded
    import mlx.core as mx
    import mlx.optimizers as optim
    from engine.algorithms.base import TrainContext
    current = [0]
    real_schedule = TrainContext.apply_schedule
    def apply_schedule(self, step):
        real_schedule(self, step)
        current[0] = step
        if step == at and kind == "hold":
            open(os.environ["HOLD_FILE"], "w").close()
            time.sleep(600)
    TrainContext.apply_schedule = apply_schedule
    real_update = optim.Optimizer.update
    def update(self, model, grads):
        real_update(self, model, grads)
        if current[0] == at:
            mx.eval(model.parameters())
            die()
    optim.Optimizer.update = update
from rlhf_tui.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(args: list[str], fault: str = "", **env: str) -> subprocess.Popen:
    full = dict(os.environ, FAULT=fault, **env)
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=ROOT, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _sets(folder: Path) -> list[str]:
    return [a for o in _overrides(folder) for a in ("--set", o)]


def _wait_for(cond: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout  # generous: six engineers share two cores
    while not cond():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"waiting for {what}: process ended with {proc.returncode}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)


def _logged_step(run_dir: Path) -> int:
    return max((r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r), default=0)


@pytest.mark.slow
def test_kill_9_at_chosen_and_random_moments_and_concurrent_writers(tmp_path, straight):
    rng = random.Random(SEED)
    run_dir = tmp_path / "run"
    sets = _sets(tmp_path)
    faults = 0

    # kill -9 at chosen moments, one after the other, each time resuming the same run; each
    # leaves its mark (checked, so a hook that stopped striking would not pass unnoticed)
    marks = {
        "append:3": lambda: not (run_dir / "metrics.jsonl").read_bytes().endswith(b"\n"),
        "checkpoint:6": lambda: any((run_dir / "checkpoints").glob(".tmp-step-000006-*")),
        "mirror:8": lambda: any(run_dir.glob(".adapters.safetensors.tmp-*")) and (run_dir / "checkpoints" / "step-000008").is_dir(),
        "update:11": lambda: _logged_step(run_dir) == 10 and (run_dir / "checkpoints" / "step-000010").is_dir(),
    }
    for i, (fault, mark) in enumerate(marks.items()):
        args = ["run", "tiny-sft", *sets, "--out", str(run_dir)] if i == 0 else ["resume", str(run_dir)]
        proc = _start(args, fault)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"{fault}: {err[-2000:]}"
        assert mark(), f"{fault} did not strike where meant"
        faults += 1

    # a writer stopped mid-step holds the directory: a resume and an --overwrite run are refused
    hold = tmp_path / "holding"
    first = _start(["resume", str(run_dir)], "hold:11", HOLD_FILE=str(hold))
    _wait_for(hold.exists, first, "the first writer to reach step 11")
    summary_before = (run_dir / "summary.json").read_bytes() if (run_dir / "summary.json").exists() else None
    for args in (["resume", str(run_dir)], ["run", "tiny-sft", *sets, "--out", str(run_dir), "--overwrite"]):
        second = _start(args)
        _, err = second.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert second.returncode == 2 and len(lines) == 1, err
        assert f"another process is writing this run (pid {first.pid} on host " in lines[0], err
        faults += 1
    assert ((run_dir / "summary.json").read_bytes() if (run_dir / "summary.json").exists() else None) == summary_before
    assert (run_dir / "checkpoints").is_dir() and (run_dir / "config.toml").exists()  # --overwrite deleted nothing
    first.kill()
    first.communicate()
    faults += 1

    # damage what the kills left: the newest checkpoint bit-flipped
    newest = max((run_dir / "checkpoints").glob("step-*"))
    _flip_bit(newest / "adapters.safetensors", rng)
    faults += 1

    # kill -9 at random moments (mid-step, mid-checkpoint or mid-append, wherever it falls)
    random_kills = 0
    for _ in range(3):
        before = (run_dir / "metrics.jsonl").stat().st_mtime_ns
        proc = _start(["resume", str(run_dir)])
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and (run_dir / "metrics.jsonl").stat().st_mtime_ns == before:
            time.sleep(0.01)  # until it trains (its first write is to the metrics)
        time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is None:
            proc.kill()
            random_kills += 1
        proc.communicate()
        if json.loads((run_dir / "summary.json").read_text() if (run_dir / "summary.json").exists() else "{}").get("steps") == STEPS:
            break
    faults += random_kills

    final = _start(["resume", str(run_dir)])
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    problems = verdict(run_dir, straight)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"\nfaults injected: {faults} (kill -9: {4 + 1 + random_kills}, second writers: 2, bit flips: 1); runs lost: {int(bool(problems))}")
    assert not problems, problems
    # (a process killed with -9 writes no summary: attempts lists the resumes that ended)
    assert summary["attempts"][-1]["status"] == "completed"


@pytest.mark.slow
def test_two_ranks_stop_together_when_rank_0_cannot_take_the_directory(tmp_path):
    """Rank 0 alone takes the lock; when it cannot, every rank exits 2 (none waits in a collective)."""
    import re

    from engine.dir_lock import DirLock
    from tests.test_distributed import _free_port_pair, _tool

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sets = [a for o in _overrides(tmp_path) for a in ("--set", o)]
    cmd = [_tool("mlx.launch"), "-n", "2", "--backend", "ring", "--starting-port", str(_free_port_pair()), "--",
           _tool("rlhf-tui"), "run", "tiny-sft", *sets, "--out", str(run_dir)]  # fmt: skip
    with DirLock(run_dir):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert f"another process is writing this run (pid {os.getpid()}" in out, out
    # mlx.launch exits 0 whatever its ranks did; it reports their exit codes
    # both ranks exit 2, except that whichever ends second may already have been stopped by
    # mlx.launch (SIGTERM, -15) when the first ended: no rank waits in a collective either way
    codes = dict(re.findall(r"Node with rank (\d) exited with code (-?\d+)", out))
    assert set(codes) == {"0", "1"} and "2" in codes.values() and set(codes.values()) <= {"2", "-15"}, out
    assert "rank 0 could not take the run directory" in out or codes["1"] == "-15", out
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]  # no rank wrote a thing
    print("\nfault injected: a second writer launched on two ranks; run lost: False")
