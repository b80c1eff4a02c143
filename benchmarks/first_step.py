"""Time to the first training step, by data size: the first step must not wait for the data.

Builds the benchmark Llama (benchmarks/make_checkpoint.py, random weights, no download) and
DPO runs on the same pairs at several sizes; for each it times, from ``Run.start`` to the
first ``StepMetrics`` event, the run's start-up (reading and checking every row, loading the
model) and its first step (tokenising and computing reference log-probs for that batch
only). It prints a table whose last column is the ratio to the smallest size (1.0 = the
first step comes as soon whatever the data size).

    uv run python benchmarks/first_step.py                       # 64 and 4,096 pairs
    uv run python benchmarks/first_step.py --pairs 64 4096 16384 --size small
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def time_to_first_step(model: Path, data: Path, batch: int) -> tuple[float, float]:
    from engine import events as ev
    from engine.presets import load_preset
    from engine.run import Run

    cfg = load_preset("tiny-dpo", [
        f"model.path={model}", f"data.train={data}", "data.eval=", "data.task_reward=", "train.eval_on_start=false",
        "train.max_steps=2", f"train.batch_size={batch}", "train.eval_every=0", "train.save_every=0", "model.max_length=1024",
    ])
    with tempfile.TemporaryDirectory() as out:
        run = Run(cfg, out_dir=Path(out) / "run")
        marks: dict[str, float] = {}
        run.subscribe(lambda e: marks.setdefault("first", time.perf_counter()) if isinstance(e, ev.StepMetrics) else None)
        run.subscribe(lambda e: marks.setdefault("started", time.perf_counter()) if isinstance(e, ev.RunStarted) else None)
        t0 = time.perf_counter()
        summary = run.run()
        if summary.get("status") != "completed":
            raise SystemExit(f"run failed: {summary.get('error')}")
    return marks["started"] - t0, marks["first"] - t0


def main() -> None:
    from benchmarks.make_checkpoint import build, write_pairs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, nargs="+", default=[64, 4096])
    ap.add_argument("--size", default="cpu", help="benchmark model size (make_checkpoint.py: cpu, small, 1b)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache"))
    a = ap.parse_args()
    from engine.blas import reexec_with_fast_blas

    reexec_with_fast_blas([str(Path(__file__).resolve()), *sys.argv[1:]])
    model = Path(a.cache) / f"first-step-{a.size}"
    if not (model / "model.safetensors").exists():
        build(model, a.size, pairs=8)
    import json

    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    rows = []
    for i, n in enumerate([a.pairs[0], *a.pairs]):  # the first run warms caches and is not reported
        data = model / f"pairs-{n}.jsonl"
        if not data.exists():
            write_pairs(data, n, vocab, 120, 72, seed=n)  # ~200 tokens a pair, as in the issue
        startup, first = time_to_first_step(model, data, a.batch)
        if i:
            rows.append((n, startup, first))
    base = rows[0][2]
    print(f"{'pairs':>8} {'start-up s':>11} {'first step s':>13} {'ratio':>7}")
    for n, startup, first in rows:
        print(f"{n:>8,} {startup:>11.2f} {first:>13.2f} {first / base:>7.2f}")


if __name__ == "__main__":
    main()
