"""What report.to = tensorboard costs a run: the subscriber call on the training thread, and
how fast the reporting thread writes rows.

    uv run python benchmarks/report_overhead.py [--rows 2000] [--scalars 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from engine import events as ev
    from engine.reporting import Reporters, TensorBoardTracker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--scalars", type=int, default=20)
    args = parser.parse_args(argv)
    row = {f"m{i}": float(i) for i in range(args.scalars)}
    with tempfile.TemporaryDirectory() as d:
        tracker = TensorBoardTracker(Path(d) / "tb")
        t0 = time.perf_counter()
        for step in range(args.rows):
            tracker.row(step, row, time.time())
        tracker.close()
        write_s = time.perf_counter() - t0

        events = [ev.StepMetrics(step, {"step": step, **row}) for step in range(args.rows)]
        reporters = Reporters(["tensorboard"], run_dir=Path(d) / "run", project="bench", alert=print)
        reporters(ev.RunStarted(run_id="bench", run_dir=d, algorithm="sft", total_steps=args.rows, start_step=0, world_size=1, config={}))
        t0 = time.perf_counter()
        for event in events:
            reporters(event)
        call_s = time.perf_counter() - t0
        reporters(ev.RunFinished({}))
        reporters.close()
    print(f"TensorBoard writer: {args.rows / write_s:,.0f} rows/s ({args.scalars} scalars each)")
    print(f"subscriber call on the training thread: {call_s / args.rows * 1e6:.1f} us per StepMetrics event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
