"""Which attention shapes MLX's CUDA kernels differentiate without crashing, and how fast.

    python3 benchmarks/cuda_attention_cases.py            # every case, each in its own process
    python3 benchmarks/cuda_attention_cases.py q512k528bool bwd

Each case runs ``mx.fast.scaled_dot_product_attention`` on random bf16 queries (32 heads) and
keys/values (8 heads, head size 64), forward only (``fwd``) or with the gradient of q, k and v
(``bwd``), in a child process (a crash inside cuDNN kills the process: its exit status and last
line are reported). The mask is bottom-right causal, as a bool array, an additive float array,
the string ``"causal"`` or none. The time is the 4th call's, after the kernels' JIT.

On an H100 (MLX 0.32.4, 2026-12-06; benchmarks/results/cuda-attention-cases-h100.log) every
backward pass with a multiple of 128 queries over a key count that is not one died
(``malloc(): unsorted double linked list corrupted``); engine.batching keeps the answer pass
out of that case.
"""

from __future__ import annotations

import subprocess
import sys
import time

CASES = {  # name: (batch, queries, keys, mask kind)
    "q512k512causal": (8, 512, 512, "causal"),
    "q512k512bool": (8, 512, 512, "bool"),
    "q528k528bool": (8, 528, 528, "bool"),
    "q512k528bool": (8, 512, 528, "bool"),
    "q512k528float": (8, 512, 528, "float"),
    "q512k528none": (8, 512, 528, "none"),
    "q512k640bool": (8, 512, 640, "bool"),
    "q16k528bool": (8, 16, 528, "bool"),
    "q256k768bool": (16, 256, 768, "bool"),
    "q256k784bool": (16, 256, 784, "bool"),
    "q256k799bool": (16, 256, 799, "bool"),
    "q15k799bool": (16, 15, 799, "bool"),
}


def one(name: str, direction: str) -> None:
    import mlx.core as mx

    b, lq, lk, kind = CASES[name]
    mx.random.seed(0)
    q = mx.random.normal((b, 32, lq, 64)).astype(mx.bfloat16)
    k = mx.random.normal((b, 8, lk, 64)).astype(mx.bfloat16)
    v = mx.random.normal((b, 8, lk, 64)).astype(mx.bfloat16)
    seen = mx.broadcast_to((mx.arange(lk)[None] <= mx.arange(lq)[:, None] + (lk - lq))[None, None], (b, 1, lq, lk))
    mask = {"causal": "causal", "none": None, "bool": seen, "float": mx.where(seen, 0.0, -float("inf")).astype(mx.bfloat16)}[kind]

    def f(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask).astype(mx.float32).sum()

    g = mx.grad(f, argnums=(0, 1, 2)) if direction == "bwd" else f
    for _ in range(4):
        t = time.perf_counter()
        mx.eval(g(q, k, v))
        mx.synchronize()
        dt = time.perf_counter() - t
    print(f"OK {dt * 1e3:.2f} ms")


def main() -> None:
    if len(sys.argv) == 3:
        one(sys.argv[1], sys.argv[2])
        return
    procs = {(c, d): subprocess.Popen([sys.executable, __file__, c, d], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in CASES for d in ("fwd", "bwd")}
    print(f"{'case':<18} {'pass':<4} {'exit':>5}  result")
    for (c, d), p in procs.items():
        try:
            out, _ = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            p.kill()
            out = "timed out"
        last = (out.strip().splitlines() or ["(no output)"])[-1][:100]
        print(f"{c:<18} {d:<4} {p.returncode:>5}  {last}", flush=True)


if __name__ == "__main__":
    main()
