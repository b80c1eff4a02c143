"""What one DPO step keeps per transformer block, in hidden-widths per position.

    uv run python benchmarks/make_checkpoint.py --size cpu --layers 2 --out /tmp/mp/l2
    uv run python benchmarks/make_checkpoint.py --size cpu --layers 6 --out /tmp/mp/l6
    uv run python benchmarks/layer_memory.py /tmp/mp/l2 /tmp/mp/l6 --adapter lora --dtype float32

Runs the engine's DPO step (``benchmarks/gpu_step_levers.build``, reference log-probs given,
lean SwiGLU on as on a GPU) on two checkpoints that differ only in depth, and prints the growth
of the step's peak above the resting weights per block, and that growth per position in units
of the hidden size, to compare with what the backward pass must keep.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shallow")
    ap.add_argument("deep")
    ap.add_argument("--adapter", default="lora")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--answer-len", type=int, default=64)
    a = ap.parse_args()
    import mlx.core as mx
    from gpu_step_levers import build, make_pairs

    from engine import lean_swiglu
    from engine.algorithms.dpo import Dpo, pair_batch
    from engine.batching import BUCKET
    from engine.compile import release_compiled

    lean_swiglu.ENABLED = True
    got = {}
    for folder in (a.shallow, a.deep):
        cfg_json = json.loads((Path(folder) / "config.json").read_text())
        lean_swiglu.uninstall()
        extra = ("train.optimizer_state=model",) if a.adapter == "full" else ()
        cfg, ctx, algo = build(folder, a.adapter, a.dtype, True, False, extra)
        pairs = make_pairs(a.pairs, a.prompt_len, a.answer_len, cfg_json["vocab_size"], 0)
        batch = pair_batch(pairs, True, BUCKET)
        args = Dpo._inputs(batch)
        ref = mx.zeros((a.pairs, 2))
        mx.eval(ref, *args)
        for _ in range(2):
            ctx.update(algo.loss_fn, ref, *args)
        mx.synchronize()
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        ctx.update(algo.loss_fn, ref, *args)
        mx.synchronize()
        positions = int(args[0].size + args[2].size)  # Dpo._inputs: answers, their mask, prompts, prompt lengths
        got[folder] = (cfg_json["num_hidden_layers"], mx.get_peak_memory() - base, positions, cfg_json["hidden_size"])
        print(f"{folder}: {got[folder][0]} blocks, step peak above resting {got[folder][1] / 2**20:.2f} MB, {positions} positions", flush=True)
        release_compiled(ctx.trainable)
        del cfg, ctx, algo
        mx.clear_cache()
    (l1, p1, n, d), (l2, p2, _, _) = got[a.shallow], got[a.deep]
    per_block = (p2 - p1) / (l2 - l1)
    width = 4 if a.dtype == "float32" else 2
    print(f"per block: {per_block / 2**20:.2f} MB = {per_block / n / width / d:.1f} hidden-widths a position")


if __name__ == "__main__":
    main()
