"""What one MLX operation costs the host, by kind of operation, on this machine's default device.

A step that launches many small kernels is bound by the host (the CPU building and
launching each kernel), not by the device. This chains ``--ops`` operations of one kind
on small arrays (so the device's own work is negligible), evaluates the chain as one
compiled call, and prints the wall and CPU time per operation. Kinds:

* ``matmul``: ``[rows, dim] @ [dim, dim]`` (cuBLASLt on CUDA),
* ``gemv``: the same with one row (MLX's own kernel),
* ``softmax``: a row softmax (one kernel, not fusable with its neighbours),
* ``elementwise``: ``tanh`` between matmuls is skipped; this is a chain of ``x * 1.0001 + 1``
  that compilation fuses into few kernels (the floor),
* ``slice_update``: writing a row into a buffer (what a static KV cache does each token).

    python benchmarks/host_cost.py --ops 400 --repeat 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import mlx.core as mx

from benchmarks.common import cpu_seconds


def chain(kind: str, ops: int, rows: int, dim: int):
    w = mx.random.normal((dim, dim)).astype(mx.bfloat16) / dim**0.5
    buf = mx.zeros((rows, 64, dim), dtype=mx.bfloat16)

    def fn(x: mx.array) -> mx.array:
        if kind == "slice_update":
            b = buf
            for i in range(ops):
                b = mx.slice_update(b, x[:, None, :], mx.array(i % 64), axes=(1,))
            return b[:, 0, :]
        for _ in range(ops):
            if kind in ("matmul", "gemv"):
                x = x @ w
            elif kind == "softmax":
                x = mx.softmax(x, axis=-1)
            elif kind == "elementwise":
                x = x * 1.0001 + 1
        return x

    x = mx.random.normal((1 if kind == "gemv" else rows, dim)).astype(mx.bfloat16)
    mx.eval(w, buf, x)
    return mx.compile(fn), x


def measure(kind: str, ops: int, rows: int, dim: int, repeat: int) -> dict:
    fn, x = chain(kind, ops, rows, dim)
    for _ in range(3):
        mx.eval(fn(x))
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), cpu_seconds()
        mx.eval(fn(x))
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {"kind": kind, "ops": ops, "rows": rows, "dim": dim, "wall_us_per_op": 1e6 * wall / ops, "cpu_us_per_op": 1e6 * cpu / ops, "device": str(mx.default_device())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=400)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--kinds", default="matmul,gemv,softmax,elementwise,slice_update")
    a = ap.parse_args()
    rows = [measure(k, a.ops, a.rows, a.dim, a.repeat) for k in a.kinds.split(",")]
    print(f"{'kind':<14}{'wall µs/op':>12}{'CPU µs/op':>12}")
    for r in rows:
        print(f"{r['kind']:<14}{r['wall_us_per_op']:>12.1f}{r['cpu_us_per_op']:>12.1f}")
        print("BENCH_RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
