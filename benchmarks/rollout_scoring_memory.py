"""Scoring rollouts (GRPO/RLOO's training pass) through the chunked output layer vs written-out logits.

    uv run python benchmarks/rollout_scoring_memory.py --model benchmarks/.cache/cpu --rows 64 --prompt 128 --new 64

One value-and-gradient of a policy-gradient loss on ``--rows`` completions, through
``engine.rollout.completion_logprobs`` (the model's logits for every position, written out)
and ``engine.rollout.completion_stats`` (the output layer on completion positions only, a chunk
at a time), alternated twice; prints the MLX peak above the weights and the time of each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path(__file__).resolve().parent / ".cache" / "cpu"))
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    a = ap.parse_args()

    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm import load

    from engine.rollout import completion_batch, completion_logprobs, completion_stats

    model, _ = load(a.model)
    vocab = model.args.vocab_size
    rnd = np.random.default_rng(0)
    batch = completion_batch([[int(t) for t in rnd.integers(4, vocab, a.prompt)] for _ in range(a.rows)], [[int(t) for t in rnd.integers(4, vocab, a.new)] for _ in range(a.rows)])
    adv = mx.array(rnd.normal(size=(a.rows, 1)).astype(np.float32))

    def loss(m: nn.Module, chunked: bool) -> mx.array:
        lp, ent = completion_stats(m, batch) if chunked else completion_logprobs(m(batch.tokens[:, :-1]), batch)
        return -(lp * adv).sum() / batch.mask.sum() + 0 * ent.sum()

    rows = {False: [], True: []}
    for chunked in (False, True, False, True):
        step = nn.value_and_grad(model, lambda m, c=chunked: loss(m, c))
        mx.eval(model.parameters())
        mx.reset_peak_memory()
        resting = mx.get_active_memory()
        t0 = time.perf_counter()
        mx.eval(*step(model))
        rows[chunked].append(((mx.get_peak_memory() - resting) / 2**20, time.perf_counter() - t0))
    print(f"{a.rows} completions of {a.new} tokens after {a.prompt}-token prompts, vocabulary {vocab:,}, {mx.default_device()}")
    print(f"{'scoring':<24} {'peak above weights MB':>22} {'seconds':>8}")
    for chunked, name in ((False, "logits written out"), (True, "chunked, completions only")):
        peak = min(p for p, _ in rows[chunked])
        secs = min(s for _, s in rows[chunked])
        print(f"{name:<24} {peak:>22,.0f} {secs:>8.2f}")
    ratio_peak = min(p for p, _ in rows[True]) / min(p for p, _ in rows[False])
    ratio_time = min(s for _, s in rows[True]) / min(s for _, s in rows[False])
    print(f"chunked / written out: peak {ratio_peak:.2f}x, time {ratio_time:.2f}x")


if __name__ == "__main__":
    main()
