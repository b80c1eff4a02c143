"""What each lever buys in one DPO training step, measured in one process on one checkpoint.

    python3 benchmarks/gpu_step_levers.py --model /tmp/llama-1b               # GPU (or CPU) set
    python3 benchmarks/gpu_step_levers.py --model benchmarks/.cache/cpu --pairs 2 --prompt-len 60 --answer-len 30

Each variant runs the engine's own pieces (``engine.models.load_policy``, ``TrainContext``,
``Dpo.loss_fn``, ``dpo.pair_batch``) on the same random pairs (prompts of 0.8-1x
``--prompt-len`` tokens, answers of 0.8-1x ``--answer-len``), reference log-probs given (as
with ``dpo.precompute_ref_log_probs``), and reports the median step after warm-up, its CPU
time, and the peak MLX memory of the timed steps:

* layout ``shared``: each prompt runs once, both answers attend to its keys (answer queries
  are fewer than keys: no fused attention kernel on CUDA, whose cuDNN path needs as many
  queries as keys); ``plain``: [prompt, answer] rows, causal attention, fused on CUDA;
* step ``engine``: ``TrainContext.update`` as a run calls it (on a GPU: value, gradient,
  clipping and the optimizer update in one compiled call); ``:unfused`` compiles only the
  value and gradient and runs clipping and the update op by op (the engine before 2026-11-29);
  ``:nocompile`` compiles nothing; ``:ckpt`` adds gradient checkpointing; ``:notile`` keeps
  lengths at multiples of 16 instead of padding the model's input to a multiple of 128 on
  CUDA (``engine.batching.CUDA_ATTENTION_TILE``: cuDNN's fused attention backward needs it);
  ``:fp32lora`` runs LoRA's low-rank product in float32 as mlx-lm's layer does (the engine runs
  it in the activations' dtype: ``engine.lora_precision``); ``:modelstate`` keeps Adam's state in
  the weights' dtype (``train.optimizer_state = "model"``, as TRL keeps it for a bf16 model);
  ``:nosplit`` turns off ``engine.attention_split`` (on by default on CUDA; it acts where a
  batch's lengths are off the tile: ``--prompt-len 520 --answer-len 270``); ``:nockpt`` holds
  the split's pieces for the backward pass instead of recomputing them (the split before
  2026-12-06's later run); ``:chunkN`` runs the output layer N positions at a time (the
  engine sizes a chunk by the vocabulary: ``engine.logprobs.chunk_positions``; 2048 was fixed);
  ``:mlxswiglu`` differentiates mlx-lm's SwiGLU op by op instead of ``engine.lean_swiglu``
  (which keeps two fewer arrays per layer for the backward pass); ``:memlimitN`` sets MLX's
  memory limit to N GiB for the variant (``train.memory_limit_gb``: past it, MLX waits for
  queued GPU work to finish, which frees the buffers that work holds).

MLX's CUDA backend holds every input of a queued command buffer until the buffer has run,
and lets up to 10 buffers queue; how much a buffer takes is set by the environment
(``MLX_MAX_MB_PER_BUFFER``, ``MLX_MAX_OPS_PER_BUFFER``), read once per process: run the script
once per setting to compare them.

Prints one JSON line per variant (``LEVER {...}``) and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import cpu_seconds  # noqa: E402


def make_pairs(n: int, prompt_len: int, answer_len: int, vocab: int, seed: int) -> list[SimpleNamespace]:
    rnd = random.Random(seed)

    def ids(k: int) -> tuple[int, ...]:
        return tuple(rnd.randrange(4, vocab) for _ in range(k))

    out = []
    for _ in range(n):
        p = rnd.randint(int(prompt_len * 0.8), prompt_len)
        out.append(SimpleNamespace(prompt_ids=ids(p), chosen_ids=ids(rnd.randint(int(answer_len * 0.8), answer_len)), rejected_ids=ids(rnd.randint(int(answer_len * 0.8), answer_len))))
    return out


def build(model_dir: str, adapter: str, dtype: str, compiled: bool, grad_checkpoint: bool, extra: tuple[str, ...] = ()):
    from engine.algorithms.base import TrainContext
    from engine.algorithms.dpo import Dpo
    from engine.compile import enable_grad_checkpoint
    from engine.distributed import World
    from engine.models import load_policy
    from engine.presets import load_preset

    cfg = load_preset(
        "tiny-dpo",
        [
            f"model.path={model_dir}",
            f"model.adapter={adapter}",
            "model.lora_rank=8",
            f"model.dtype={dtype}",
            f"train.compile={'true' if compiled else 'false'}",
            "train.learning_rate=1e-5",
            "train.max_grad_norm=1.0",
            *extra,
        ],
    )
    policy = load_policy(cfg)
    if grad_checkpoint:
        enable_grad_checkpoint(policy.model)
    noop = lambda *a, **k: None  # noqa: E731
    ctx = TrainContext(cfg, policy, World(None, 0, 1), check=noop, phase=noop, log=noop, alert=noop, sample=noop)
    ctx.build_optimizer()
    algo = Dpo(ctx)
    algo.average = False
    return cfg, ctx, algo


def measure(ctx, algo, pairs, shared: bool, warmup: int, steps: int) -> dict:
    import mlx.core as mx

    from engine.algorithms.dpo import Dpo, pair_batch
    from engine.batching import BUCKET

    batch = pair_batch(pairs, shared, BUCKET)
    args = Dpo._inputs(batch)
    ref = mx.array([[-float(len(p.chosen_ids)) * 3.0, -float(len(p.rejected_ids)) * 3.0] for p in pairs], dtype=mx.float32)
    mx.eval(ref, *args)
    for _ in range(warmup):
        ctx.update(algo.loss_fn, ref, *args)
    mx.synchronize()
    mx.reset_peak_memory()
    times, cpus = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), cpu_seconds()
        loss, _, _ = ctx.update(algo.loss_fn, ref, *args)
        mx.synchronize()
        times.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    return {
        "step_s": statistics.median(times),
        "step_cpu_s": statistics.median(cpus),
        "peak_gb": mx.get_peak_memory() / 2**30,
        "tokens": batch.num_tokens,
        "tokens_per_s": batch.num_tokens / statistics.median(times),
        "loss": loss,
    }


STEP_ARGS = ("pairs", "prompt_len", "answer_len", "dtype", "warmup", "steps")


def add_step_args(ap: argparse.ArgumentParser) -> None:
    """The batch and timing options (``STEP_ARGS``), shared with ``cuda_buffer_memory.py``."""
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--answer-len", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    add_step_args(ap)
    ap.add_argument("--variants", default="lora:shared:unfused,lora:shared,lora:plain,full:plain,full:shared,full:shared:unfused", help="adapter:layout[:nocompile|:ckpt|:unfused|:notile|:nosplit|:nockpt|:chunkN|:fp32lora|:modelstate|:mlxswiglu|:memlimitN],...")
    ap.add_argument("--results", default="")
    a = ap.parse_args()

    import mlx.core as mx

    vocab = json.loads((Path(a.model) / "config.json").read_text())["vocab_size"]
    pairs = make_pairs(a.pairs, a.prompt_len, a.answer_len, vocab, seed=0)
    rows = []
    for spec in [v.strip() for v in a.variants.split(",") if v.strip()]:
        adapter, layout, *flags = spec.split(":")
        t0 = time.time()
        from engine.algorithms import base

        base.FUSED_STEP = "unfused" not in flags
        from engine import batching

        batching.CUDA_ATTENTION_TILE = 1 if "notile" in flags else 128
        from engine import lora_precision

        lora_precision.ENABLED = "fp32lora" not in flags
        from engine import attention_split

        attention_split.ENABLED = "nosplit" not in flags  # on by default (CUDA); installed by load_policy where on
        attention_split.CHECKPOINT = "nockpt" not in flags
        from engine import logprobs

        logprobs.CHUNK_POSITIONS = next((int(f[5:]) for f in flags if f.startswith("chunk")), None)
        attention_split.uninstall()
        from engine import lean_swiglu

        lean_swiglu.ENABLED = "mlxswiglu" not in flags  # installed by load_policy where on
        lean_swiglu.uninstall()
        extra = ("train.optimizer_state=model",) if "modelstate" in flags else ()
        limit = next((float(f[8:]) for f in flags if f.startswith("memlimit")), 0.0)
        default_limit = mx.set_memory_limit(int(limit * 2**30)) if limit else None
        cfg, ctx, algo = build(a.model, adapter, a.dtype, "nocompile" not in flags, "ckpt" in flags, extra)
        r = {"variant": spec, "device": str(mx.default_device()), **measure(ctx, algo, pairs, layout == "shared", a.warmup, a.steps)}
        r["wall_s"] = time.time() - t0
        r["env"] = {k: v for k, v in os.environ.items() if k.startswith("MLX_")}
        if default_limit is not None:
            mx.set_memory_limit(default_limit)
        rows.append(r)
        print("LEVER " + json.dumps(r), flush=True)
        if a.results:
            with open(a.results, "a") as fh:
                fh.write(json.dumps(r) + "\n")
        from engine.compile import release_compiled

        release_compiled(ctx.trainable)
        del cfg, ctx, algo
        mx.clear_cache()
    print(f"\n{a.pairs} pairs, prompts <= {a.prompt_len}, answers <= {a.answer_len} tokens, {a.dtype}")
    print(f"{'variant':<24} {'step s':>8} {'CPU s':>7} {'tok/s':>9} {'peak GB':>8}")
    for r in rows:
        print(f"{r['variant']:<24} {r['step_s']:>8.3f} {r['step_cpu_s']:>7.2f} {r['tokens_per_s']:>9,.0f} {r['peak_gb']:>8.2f}")


if __name__ == "__main__":
    main()
