"""Does the labelling queue keep ahead of a person? Times the built-in model writing pairs.

    uv run python benchmarks/labelling_queue.py [--prompts 40] [--max-tokens 16] [--batch 4]

Prints model load time, the time to the first pair, and the steady time per pair when
prompts are sampled ``--batch`` at a time (two completions each), as the labelling screen
does. A person labels at most about one pair a second; the screen keeps 6 pairs ready,
so it never waits as long as a pair takes well under a second to write.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.api import use_fast_blas  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--model", default="builtin:tiny-sorter")
    args = ap.parse_args()
    use_fast_blas()
    from engine.presets import builtin_dir
    from engine.sampling import CompletionWriter, Sampling, resolve_model_choice

    prompts = [json.loads(line)["prompt"] for line in (builtin_dir() / "data" / "sort_prompts.jsonl").read_text().splitlines()][: args.prompts]
    t0 = time.perf_counter()
    writer = CompletionWriter(resolve_model_choice(args.model), 512)
    load_s = time.perf_counter() - t0
    sampling = Sampling(max_tokens=args.max_tokens)
    batch_times = []
    for i in range(0, len(prompts), args.batch):
        chunk = prompts[i : i + args.batch]
        t = time.perf_counter()
        writer.complete(chunk, sampling)
        batch_times.append((time.perf_counter() - t) / len(chunk))
    print(json.dumps({
        "model": args.model,
        "load_s": round(load_s, 3),
        "first_pair_s": round(load_s + batch_times[0] * args.batch, 3),
        "pair_s_median": round(statistics.median(batch_times[1:] or batch_times), 4),
        "pairs_per_min": round(60 / statistics.median(batch_times[1:] or batch_times), 1),
        "batch": args.batch,
        "max_tokens": args.max_tokens,
    }))


if __name__ == "__main__":
    main()
