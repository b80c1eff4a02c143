"""How long the pair inspector takes to score a data file, and how batch size changes it.

    uv run python benchmarks/inspector_scoring.py RUN_DIR [--data FILE] [--limit N] [--batch 16 64]

RUN_DIR is a trained run (e.g. ``uv run rlhf-tui run tiny-dpo --set train.max_steps=60 --out /tmp/ck``).
Scores the data (default: the run's training file) with the run's latest checkpoint against
its base model, as the inspector's ``c`` does, once per batch size. Prints wall and CPU
seconds (CPU time is steadier on a shared machine) and pairs per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import cpu_seconds  # noqa: E402
from engine.api import use_fast_blas  # noqa: E402


def main() -> None:
    use_fast_blas()
    from engine import scoring

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--data", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    args = ap.parse_args()

    t0, c0 = time.perf_counter(), cpu_seconds()
    scorer = scoring.checkpoint_scorer(args.run_dir)
    data = args.data or (scorer.config.data.train if scorer.config else "")
    pairs = scoring.tokenize_pairs(scorer, data)[: args.limit]
    load = {"load_s": time.perf_counter() - t0, "load_cpu_s": cpu_seconds() - c0, "pairs": len(pairs)}
    print(json.dumps(load))
    for bs in args.batch:
        t0, c0 = time.perf_counter(), cpu_seconds()
        scores = scoring.score(scorer, pairs, batch_size=bs)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        right = sum(scorer.prefers_chosen(s) for s in scores)
        print(json.dumps({"batch_size": bs, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                          "pairs_per_s": round(len(pairs) / wall, 1), "prefers_chosen": right}))


if __name__ == "__main__":
    main()
