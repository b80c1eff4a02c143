"""Batched, KV-cached rollouts (engine.rollout.generate) vs one prompt at a time.

    uv run python benchmarks/rollouts.py --model benchmarks/.cache/cpu --prompts 16 --new 64

Same model, same prompts, same number of new tokens per prompt (EOS is masked out of the
sampling distribution so every row generates exactly ``--new`` tokens in both modes).
Prints generated tokens per second for each and the ratio (target: batched >= 5x), and the
same ratio in CPU time (steadier than wall time on a shared CPU). ``--compiled`` also times
the batch with the compiled decode step (engine.decode; warmed up on the same shapes first,
so its trace and kernel JIT are not counted) and prints its ratio to the eager batch;
``--fused`` adds the compiled step with q/k/v and gate/up as one matmul each
(engine.fused_projections, off by default), to show what fusing them buys; ``--eager-fused``
times the eager batch again with them fused (``fused_projections.EAGER``; the eager batch
above is timed unfused). ``--threads N``
times the same rows split into N groups, each decoded eagerly in its own Python thread on its
own stream (MLX releases the GIL while it evaluates), to see whether N threads overlap the
per-token host work that sets the rate on CUDA. They did not: on an H100 two threads were
1.10x slower than one batch, at twice the CPU time (benchmarks/results/rollouts-h100-threads.log),
so the engine decodes one batch. On MLX 0.32.4's CPU backend the process aborts at exit after thread streams
("terminate called without an active exception"), so the script leaves with ``os._exit``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(Path(__file__).resolve().parent / ".cache" / "cpu"))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compiled", action="store_true", help="also time the compiled decode step")
    ap.add_argument("--fused", action="store_true", help="with --compiled: also time it with q/k/v and gate/up fused into one matmul each")
    ap.add_argument("--eager-fused", action="store_true", help="also time the eager batch with q/k/v and gate/up fused into one matmul each")
    ap.add_argument("--threads", type=int, default=0, help="also time the rows split into this many groups decoded in as many threads, each on its own stream")
    ap.add_argument("--no-sequential", dest="sequential", action="store_false", help="time one prompt alone instead of every prompt one by one")
    a = ap.parse_args()

    import mlx.core as mx
    from mlx_lm.utils import load

    from engine import fused_projections
    from engine.rollout import generate, generate_one_by_one

    fused_projections.EAGER = False  # the eager baseline unfused; --eager-fused times it fused
    model, tok = load(a.model)
    model.set_dtype({"float32": mx.float32, "bfloat16": mx.bfloat16}[a.dtype])
    rows = [json.loads(line) for line in (Path(a.model) / "data" / "train.jsonl").read_text().splitlines()][: a.prompts]
    prompts = [tok.encode(" ".join(r["prompt"].split()[: a.prompt_words])) for r in rows]
    no_eos: set[int] = {-1}  # a token id that never occurs: every row runs to --new tokens
    mx.random.seed(0)

    def timed(call):
        t, c = time.perf_counter(), time.process_time()
        out = call()
        return out, time.perf_counter() - t, time.process_time() - c

    def batch(**kw):
        return generate(model, prompts, max_new_tokens=a.new, eos_ids=no_eos, **kw)

    def warm_up():
        generate(model, prompts[:2], max_new_tokens=4, eos_ids=no_eos)

    warm_up()
    batched, t_batched, c_batched = timed(batch)
    compiled = None
    if a.compiled:
        batch(compiled=True)  # trace + JIT
        out, wall, cpu = timed(lambda: batch(compiled=True))
        compiled = (out.num_tokens, wall, cpu)
    fused = None
    if a.compiled and a.fused:
        fused_projections.ENABLED = True
        batch(compiled=True)  # its own trace
        fused = timed(lambda: batch(compiled=True))[1]
        fused_projections.ENABLED = False
    eager_fused = None
    if a.eager_fused:
        fused_projections.EAGER = True
        warm_up()
        eager_fused = timed(batch)[1:]
        fused_projections.EAGER = False
    threaded = None
    if a.threads > 1:
        threaded = threaded_decode(model, prompts, a.new, no_eos, a.threads)
    seq, t_seq, c_seq = timed(lambda: generate_one_by_one(model, prompts if a.sequential else prompts[:1], max_new_tokens=a.new, eos_ids=no_eos))
    res = {
        "device": str(mx.default_device()),
        "prompts": len(prompts),
        "new_tokens": a.new,
        "batched_tokens_per_s": batched.num_tokens / t_batched,
        "sequential_tokens_per_s": seq.num_tokens / t_seq,
        "batched_s": t_batched,
        "sequential_s": t_seq,
        "batched_cpu_s": c_batched,
        "sequential_cpu_s": c_seq,
    }
    if compiled is not None:
        res["compiled_tokens_per_s"] = compiled[0] / compiled[1]
        res["compiled_s"], res["compiled_cpu_s"] = compiled[1], compiled[2]
        res["compiled_vs_batched_time"] = compiled[1] / t_batched
        res["compiled_ms_per_token_step"] = 1000 * compiled[1] / a.new
        res["batched_ms_per_token_step"] = 1000 * t_batched / a.new
    if fused is not None:
        res["fused_ms_per_token_step"] = 1000 * fused / a.new
        res["fused_vs_unfused_time"] = fused / compiled[1]
    if eager_fused is not None:
        res["batched_ms_per_token_step"] = 1000 * t_batched / a.new
        res["eager_fused_ms_per_token_step"] = 1000 * eager_fused[0] / a.new
        res["eager_fused_cpu_ms_per_token_step"] = 1000 * eager_fused[1] / a.new
        res["batched_cpu_ms_per_token_step"] = 1000 * c_batched / a.new
        res["eager_fused_vs_batched_time"] = eager_fused[0] / t_batched
    if threaded is not None:
        res["threads"] = a.threads
        res["threads_ms_per_token_step"] = 1000 * threaded[1] / a.new
        res["threads_vs_batched_time"] = threaded[1] / t_batched
        res["threads_cpu_s"] = threaded[2]
        res["threads_tokens"] = threaded[0]
    res["speedup"] = res["batched_tokens_per_s"] / res["sequential_tokens_per_s"]
    res["speedup_cpu_time"] = (c_seq / seq.num_tokens) / (c_batched / batched.num_tokens)  # steadier on a shared CPU
    print("BENCH_RESULT " + json.dumps(res), flush=True)
    if threaded is not None:
        os._exit(0)


def threaded_decode(model: Any, prompts: list[list[int]], new: int, no_eos: set[int], n: int) -> tuple[int, float, float]:
    """(tokens, seconds, CPU seconds) of ``prompts`` split into ``n`` groups decoded at once, one
    thread and one stream per group (a stream belongs to the thread that made it), after a
    warm-up of the same split."""
    import threading

    import mlx.core as mx

    from engine.rollout import generate

    groups = [prompts[i::n] for i in range(n)]

    def once() -> tuple[int, float, float]:
        counts = [0] * n
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                stream = mx.new_stream(mx.default_device())
                with mx.stream(stream):
                    counts[i] = generate(model, groups[i], max_new_tokens=new, eos_ids=no_eos).num_tokens
                mx.synchronize(stream)
            except BaseException as err:  # reported in the main thread
                errors.append(err)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        t, c = time.perf_counter(), time.process_time()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        return sum(counts), time.perf_counter() - t, time.process_time() - c

    once()  # warm-up: each group's shapes
    return once()


if __name__ == "__main__":
    main()
