"""Where a QLoRA step's memory goes: fused attention, checkpointing, compiled vs eager.

    PYTHONPATH=~/site:$PWD python3 benchmarks/gpu_memory_probe.py 1b 512    # H200 (memory_table's 4-bit 1B)
    uv run python benchmarks/gpu_memory_probe.py cpu 32                    # a quick check that it runs

Builds (once) memory_table.py's 4-bit checkpoint of the size given, then prints the peak MLX
memory above the inputs of one fused-attention forward and VJP, and the peak above the
resting weights of one SFT step (1 row of 2 x L tokens) and one DPO step (1 pair: L prompt,
2 x L/2 answers), eager and compiled, with and without gradient checkpointing.
"""

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import mlx.core as mx  # noqa: E402


def _peak_of(fn) -> tuple[float, float]:
    """(peak MLX bytes above what was resting before ``fn``, seconds) of one call of ``fn``."""
    mx.synchronize()
    mx.reset_peak_memory()
    resting = mx.get_active_memory()
    t0 = time.perf_counter()
    mx.eval(fn())
    mx.synchronize()
    return mx.get_peak_memory() - resting, time.perf_counter() - t0


def sdpa_probe() -> None:
    q = mx.random.normal((1, 32, 1024, 64)).astype(mx.bfloat16)
    k = mx.repeat(mx.random.normal((1, 8, 1024, 64)).astype(mx.bfloat16), 4, axis=1)
    v = mx.repeat(mx.random.normal((1, 8, 1024, 64)).astype(mx.bfloat16), 4, axis=1)
    mx.eval(q, k, v)

    def f(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask="causal").astype(mx.float32).sum()

    for name, fn in [("fwd", lambda: f(q, k, v)), ("vjp", lambda: mx.grad(f, argnums=(0, 1, 2))(q, k, v))]:
        peak, _ = _peak_of(fn)
        print(f"SDPA {name}: peak above inputs {peak / 2**20:.1f} MB (written-out fp32 scores would be 128 MB)", flush=True)


def main() -> None:
    from gpu_step_levers import make_pairs
    from memory_table import build_quantized

    from engine.algorithms import dpo as dpo_mod
    from engine.algorithms import sft as sft_mod
    from engine.algorithms.base import TrainContext
    from engine.batching import collate
    from engine.compile import enable_grad_checkpoint, release_compiled
    from engine.distributed import World
    from engine.models import load_policy
    from engine.presets import load_preset

    size = sys.argv[1] if len(sys.argv) > 1 else "1b"
    length = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    root = Path(f"/tmp/memtab/{size}")
    if not (root / "config.json").exists():
        build_quantized(root, size)
    sdpa_probe()
    overrides = [f"model.path={root}", "model.adapter=lora", "model.lora_rank=8", "model.quantize=4bit", "model.dtype=bfloat16", "model.max_length=1100", "train.compile=true"]
    policy = load_policy(load_preset("tiny-sft", overrides))

    def noop(*a: object, **k: object) -> None:
        return None

    ctx = TrainContext(load_preset("tiny-sft", overrides), policy, World(None, 0, 1), check=noop, phase=noop, log=noop, alert=noop, sample=noop)
    ctx.build_optimizer()
    rnd = random.Random(0)
    batch = collate([(tuple(rnd.randrange(4, 8000) for _ in range(length)), tuple(rnd.randrange(4, 8000) for _ in range(length)))])
    pairs = make_pairs(1, length, length // 2, 8000, 0)

    def sft_step(compiled: bool):
        algo = sft_mod.Sft(ctx)
        type(algo).compilable = compiled
        return lambda: ctx.update(algo.loss_fn, batch.tokens, batch.mask, None)[0]

    def dpo_step(compiled: bool):
        algo = dpo_mod.Dpo(ctx)
        algo.average = False
        type(algo).compilable = compiled
        b = dpo_mod.pair_batch(pairs, True)
        ref = mx.array([[-7.0 * length, -7.0 * length]])
        return lambda: ctx.update(algo.loss_fn, ref, *dpo_mod.Dpo._inputs(b))[0]

    def measure(name: str, fn) -> None:
        fn()  # warm-up (compiles)
        peak, seconds = _peak_of(lambda: mx.array(fn()))
        print(f"PROBE {name}: peak above resting {peak / 2**30:.2f} GB, step {seconds:.3f} s", flush=True)
        release_compiled(ctx.trainable)
        mx.clear_cache()

    measure("sft eager no-ckpt", sft_step(False))
    enable_grad_checkpoint(policy.model)
    measure("sft eager ckpt", sft_step(False))
    measure("sft compiled ckpt", sft_step(True))
    measure("dpo eager ckpt", dpo_step(False))
    measure("dpo compiled ckpt", dpo_step(True))


if __name__ == "__main__":
    main()
