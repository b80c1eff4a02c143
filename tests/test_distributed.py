"""Data-parallel training launched as a user launches it: ``mlx.launch -n 2 --backend ring``.

The proof of equivalence: two ranks sharing a global batch of b examples (b/2 each) make
the same update as one process on all b, because each rank's loss is its share of the
global mean, gradients are averaged before clipping and metrics are averaged after.
Both runs go through the real CLI on loopback; the test compares what they wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "presets" / "data" / "sort_train.jsonl"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def _free_port_pair() -> int:
    """A port p with p and p+1 free (the ring backend listens on one port per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 65000:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def _common(data: Path, out: Path, named_by_rank0: bool = False) -> list[str]:
    sets = [
        f"data.train={data}",
        "data.eval=",
        "train.batch_size=8",
        "train.max_steps=3",
        "train.optimizer=sgd",  # the update is the (clipped) averaged gradient itself
        "train.learning_rate=0.05",
        "train.max_grad_norm=0.05",  # small enough that clipping acts on the averaged gradient
        "train.eval_every=0",
        "train.save_every=0",
        "train.seed=3",
    ]
    # without --out rank 0 names the run directory under --runs-root and tells the others
    where = ["--runs-root", str(out)] if named_by_rank0 else ["--out", str(out)]
    return [*(a for s in sets for a in ("--set", s)), *where]


def _launch(
    preset: str, data: Path, out: Path, ranks: int, overrides: tuple[str, ...] = (), named_by_rank0: bool = False
) -> subprocess.Popen[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["run", preset, *_common(data, out, named_by_rank0), *(a for s in overrides for a in ("--set", s))]
    if ranks == 1:
        cmd = [_tool("rlhf-tui"), *args]
    else:
        port = _free_port_pair()
        cmd = [_tool("mlx.launch"), "-n", str(ranks), "--backend", "ring", "--starting-port", str(port), "--", _tool("rlhf-tui"), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # a session of its own, so that a failing test can end the launcher and its ranks together
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=out.parent, start_new_session=True)


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out = ""
        raise AssertionError(f"run did not finish:\n{out}") from None
    assert proc.returncode == 0, out
    return out


def _train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def _final_weights(run_dir: Path) -> dict[str, np.ndarray]:
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert ckpts, f"no checkpoint in {run_dir}"
    weights = mx.load(str(ckpts[-1] / "adapters.safetensors"))
    return {k: np.array(v.astype(mx.float32)) for k, v in weights.items()}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 pairs of unequal lengths, so the two ranks hold different token counts."""
    from engine.builtin import builtin_model_path

    builtin_model_path("tiny-sorter")  # built once here, not by racing launches under a timeout
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(DATA.read_text().splitlines(keepends=True)[:24]))
    return path


@pytest.mark.parametrize(
    ("preset", "keys"),
    [
        ("tiny-dpo", ("loss", "grad_norm", "rewards/margins", "logps/chosen", "logps/rejected")),
        ("tiny-sft", ("loss", "grad_norm", "mean_token_accuracy")),
    ],
)
@pytest.mark.slow
def test_two_ranks_make_the_same_update_as_one_process(preset: str, keys: tuple[str, ...], pairs: Path, tmp_path: Path) -> None:
    one, two, half = tmp_path / "one", tmp_path / "two", tmp_path / "half"
    # the SFT case also lets rank 0 name the run directory (no --out)
    named = preset == "tiny-sft"
    procs = {
        "one": _launch(preset, pairs, one, ranks=1),
        "two": _launch(preset, pairs, two, ranks=2, named_by_rank0=named),
    }
    if preset == "tiny-dpo":
        # one process on a single rank's share: what the ranks would do without averaging
        procs["half"] = _launch(preset, pairs, half, ranks=1, overrides=("train.batch_size=4",))
    try:
        if preset == "tiny-dpo":
            _follow_with_the_console(two, steps=3)
        logs = {name: _finish(p) for name, p in procs.items()}
    finally:
        for proc in procs.values():
            _kill(proc)
    if named:
        made = list(two.iterdir())
        assert len(made) == 1, made  # one directory, created by rank 0 alone
        two = made[0]
        assert f"-> {two}" in logs["two"]

    # launched once, reported once: rank 1 prints nothing, the run directory is written once
    assert logs["two"].count("completed: 3 steps") == 1, logs["two"]
    assert sum(line.startswith("run ") for line in logs["two"].splitlines()) == 1, logs["two"]
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert (s1["status"], s1["world_size"]) == ("completed", 1)
    assert (s2["status"], s2["world_size"]) == ("completed", 2)
    events = [json.loads(x) for x in (two / "events.log").read_text().splitlines()]
    assert [e["event"] for e in events].count("RunStarted") == 1

    rows1, rows2 = _train_rows(one), _train_rows(two)
    assert [r["step"] for r in rows1] == [r["step"] for r in rows2] == [1, 2, 3]
    beta = tomllib.loads((one / "config.toml").read_text()).get("dpo", {}).get("beta", 0.0) if preset == "tiny-dpo" else 0.0
    for r1, r2 in zip(rows1, rows2, strict=True):
        # DPO's rewards are beta x differences of summed log-probs: at step 1 (policy = reference)
        # they are float32 noise, about one rounding of beta x |logps| (1.1e-6 seen with AVX2
        # kernels, beta 0.3, |logps| 28), so 32 such roundings are allowed, not a fixed number
        logps = max(abs(r1.get("logps/chosen", 0.0)), abs(r1.get("logps/rejected", 0.0)))
        noise = 32 * float(np.finfo(np.float32).eps) * beta * logps
        for key in keys:
            assert r2[key] == pytest.approx(r1[key], rel=5e-4, abs=max(1e-5, noise)), (r1["step"], key)
        if "rewards/accuracies" in r1 and r1["step"] > 1:
            # a count of pairs: at step 1 the policy is the reference and the rewards are float
            # noise; later a near-tie may still flip one pair of 8
            assert abs(r2["rewards/accuracies"] - r1["rewards/accuracies"]) <= 0.125 + 1e-6
    # the clip acted (the norm is measured before clipping), so clipping is covered too
    assert all(r["grad_norm"] > 0.05 for r in rows1)

    w1, w2 = _final_weights(one), _final_weights(two)
    assert w1.keys() == w2.keys() and w1
    diff = max(float(np.abs(w1[k] - w2[k]).max()) for k in w1)
    assert diff < 1e-5, f"parameters differ by {diff}"
    if "half" in procs:
        # 3 SGD steps of norm lr * 0.05 = 0.0025: a run on one rank's share lands visibly
        # elsewhere, so the tolerance above would catch ranks that did not average
        w_half = _final_weights(half)
        assert max(float(np.abs(w1[k] - w_half[k]).max()) for k in w1) > 100 * max(diff, 1e-6)
        assert abs(_train_rows(half)[0]["logps/chosen"] - rows1[0]["logps/chosen"]) > 0.1


def _follow_with_the_console(run_dir: Path, steps: int) -> None:
    """``rlhf-tui monitor RUN_DIR`` on the 2-rank run while rank 0 writes it."""
    import asyncio
    import time

    from rlhf_tui.app import make_app
    from rlhf_tui.screens.monitor import MonitorScreen

    deadline = time.monotonic() + 240
    while not (run_dir / "events.log").exists():
        assert time.monotonic() < deadline, "the 2-rank run never wrote its run directory"
        time.sleep(0.2)

    async def scenario() -> None:
        app = make_app(follow_dir=str(run_dir))
        async with app.run_test(size=(120, 36)) as pilot:
            monitor = app.screen
            assert isinstance(monitor, MonitorScreen)
            while monitor.state.status != "completed":
                assert time.monotonic() < deadline, f"the console saw {monitor.state.status} at step {monitor.state.step}"
                await pilot.pause(0.2)
            assert monitor.state.world_size == 2
            assert monitor.state.series["loss"].steps == list(range(1, steps + 1))

    asyncio.run(scenario())


def test_batch_size_must_split_evenly_over_ranks(pairs: Path, tmp_path: Path) -> None:
    port = _free_port_pair()
    cmd = [
        _tool("mlx.launch"), "-n", "2", "--backend", "ring", "--starting-port", str(port), "--",
        _tool("rlhf-tui"), "run", "tiny-dpo", "--out", str(tmp_path / "run"),
        "--set", f"data.train={pairs}", "--set", "data.eval=", "--set", "train.max_steps=1", "--set", "train.batch_size=3",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    # mlx.launch itself exits 0 whatever its ranks did; it reports their exit codes
    out = proc.stdout + proc.stderr
    assert "train.batch_size = 3 must be a multiple of the number of ranks (2)" in out
    assert re.search(r"Node with rank \d exited with code 2", out), out


GATHER_SCRIPT = """
import json, sys
import mlx.core as mx
from engine.distributed import init_world
world = init_world()
seen = []
def rows(idx):
    seen.extend(idx)
    return mx.array([[float(i), 10.0 * i] for i in idx], dtype=mx.float32).reshape(len(idx), 2)
out = world.gather_sharded(5, rows)
both = world.any(world.rank == 1)
name = world.broadcast_text("runs/tiny-dpo-20261126-101500-1" if world.rank == 0 else "")
import mlx.nn as nn
same = nn.Linear(3, 2)
same.update({"weight": mx.ones((2, 3)), "bias": mx.zeros((2,))})
first = world.sync_parameters(same)  # equal on both ranks: nothing to copy
mx.random.seed(100 + world.rank)  # a model built differently on each machine
layer = nn.Linear(3, 2)
second = world.sync_parameters(layer)
print(json.dumps({"rank": world.rank, "size": world.size, "seen": seen, "rows": out.tolist(), "any": both, "name": name,
                  "synced": [first, second], "weight": layer.weight.tolist(), "bias": layer.bias.tolist()}))
"""


def test_world_collectives_over_two_processes(tmp_path: Path) -> None:
    """Sharded scoring (DPO's reference log-probs, evaluation) gives every rank all rows in order."""
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    port = _free_port_pair()
    cmd = [_tool("mlx.launch"), "-n", "2", "--backend", "ring", "--starting-port", str(port), "--", sys.executable, str(script)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    reports = sorted((json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")), key=lambda r: r["rank"])
    assert [r["rank"] for r in reports] == [0, 1], proc.stdout + proc.stderr
    assert reports[0]["seen"] == [0, 2, 4] and reports[1]["seen"] == [1, 3]  # each row computed once
    for r in reports:
        assert r["size"] == 2 and r["any"] is True
        assert r["rows"] == [[float(i), 10.0 * i] for i in range(5)]
        assert r["name"] == "runs/tiny-dpo-20261126-101500-1"
        assert r["synced"] == [False, True]
    # weights that differed between ranks are rank 0's on both afterwards
    mx.random.seed(100)
    import mlx.nn as nn

    rank0 = nn.Linear(3, 2)
    for r in reports:
        assert np.allclose(r["weight"], np.array(rank0.weight)) and np.allclose(r["bias"], np.array(rank0.bias))


def test_world_of_one_without_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.distributed import World, launched_rank

    solo = World(None, 0, 1)
    assert solo.any(True) and not solo.any(False)
    assert solo.broadcast_text("runs/x") == "runs/x" and solo.broadcast_int(7) == 7
    assert solo.mean({"loss": 2.0}) == {"loss": 2.0}
    assert solo.gather_sharded(3, lambda idx: mx.array([[float(i)] for i in idx])).tolist() == [[0.0], [1.0], [2.0]]
    for name in ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launched_rank() == 0
    monkeypatch.setenv("MLX_RANK", "1")
    assert launched_rank() == 1
