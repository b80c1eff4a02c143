"""DPO throughput on one process vs N data-parallel ranks, launched as a user would.

On a machine with two NVIDIA GPUs (MLX's CUDA backend, ranks joined by NCCL):

    python benchmarks/distributed_scaling.py --work /tmp/scaling --ranks 2 --backend nccl

On any machine, a quick check that the script works (tiny model, ring over loopback):

    python benchmarks/distributed_scaling.py --work /tmp/scaling --model tiny --ranks 2 --backend ring

``--scaling strong`` (default) keeps the global batch fixed (each of N ranks gets 1/N of
it); ``--scaling weak`` keeps the batch per rank fixed (N ranks train on N times the pairs
per step), which is how data parallelism is used to go faster per token.

It builds a Llama with random weights (``--model 1b``: Llama-3.2-1B's shape, 1.24B
parameters, bf16) and fixed-length synthetic preference pairs, then runs
``python -m rlhf_tui run`` on one process and under ``mlx.launch -n N``, each with the same
global batch, and reads rank 0's metrics.jsonl. Each run is stopped (SIGKILL of its
process group) once it has logged its steps, so no final checkpoint is written.
Throughput = global tokens per step / median step time over the steps after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import string
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    # Llama-3.2-1B's shape (1.24B parameters with tied embeddings)
    "1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
}


def build_model(folder: Path, shape: str) -> int:
    """A random-weight Llama in mlx-lm's folder format, with the built-in char tokenizer."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from engine.builtin import write_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        **SHAPES[shape],
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(folder)
    return sum(v.size for v in weights.values())


def write_pairs(path: Path, n: int, prompt_chars: int, answer_chars: int) -> None:
    """Fixed-length pairs (one token per character), so every rank holds the same tokens."""
    rng = random.Random(0)
    letters = string.ascii_lowercase

    def text(k: int) -> str:
        return "".join(rng.choice(letters + " ") for _ in range(k))

    with open(path, "w") as fh:
        for _ in range(n):
            fh.write(json.dumps({"prompt": text(prompt_chars - 1) + "\n", "chosen": text(answer_chars), "rejected": text(answer_chars)}) + "\n")


def write_preset(path: Path, model: Path, data: Path, args: argparse.Namespace, batch: int) -> None:
    adapter = f'adapter = "{args.adapter}"\nlora_rank = 16\n' if args.adapter != "full" else 'adapter = "full"\n'
    path.write_text(
        f'name = "scaling-dpo"\nalgorithm = "dpo"\n\n[model]\npath = "{model}"\n{adapter}dtype = "bfloat16"\nmax_length = {args.prompt + args.answer + 16}\n\n'
        f'[data]\ntrain = "{data}"\neval = ""\n\n'
        f"[train]\nmax_steps = 100000\nbatch_size = {batch}\nlearning_rate = 1e-6\neval_every = 0\nsave_every = 0\nlog_every = 1\n\n"
        f'[dpo]\nbeta = 0.1\nloss_type = "sigmoid"\n'
    )


def run(preset: Path, out: Path, ranks: int, backend: str, steps: int, timeout: float) -> list[dict]:
    """Train until ``steps`` metric rows exist, then kill the run; returns the rows."""
    train = [sys.executable, "-m", "rlhf_tui", "run", str(preset), "--out", str(out), "--quiet"]
    if ranks > 1:
        launcher = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]
        cmd = [*launcher, "-n", str(ranks), "--backend", backend, "--", *train]
    else:
        cmd = train
    log = open(out.with_suffix(".log"), "w")
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    metrics = out / "metrics.jsonl"
    rows: list[dict] = []
    try:
        while time.time() - t0 < timeout:
            if metrics.exists():
                rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip().endswith("}")]
                rows = [r for r in rows if "loss" in r]
                if len(rows) >= steps:
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
    if len(rows) < steps:
        tail = out.with_suffix(".log").read_text()[-3000:]
        raise SystemExit(f"{ranks}-rank run logged {len(rows)} of {steps} steps in {time.time() - t0:.0f} s:\n{tail}")
    print(f"  {ranks} rank(s): {len(rows)} steps in {time.time() - t0:.0f} s (start-up included)", flush=True)
    return rows[:steps]


def summarise(rows: list[dict], warmup: int, tokens_per_step: int) -> dict:
    timed = rows[warmup:]
    step = statistics.median(r["step_time_s"] for r in timed)
    wall = (timed[-1]["elapsed_s"] - rows[warmup - 1]["elapsed_s"]) / len(timed)
    return {
        "median_step_s": round(step, 4),
        "wall_step_s": round(wall, 4),
        "tokens_per_sec": round(tokens_per_step / step, 1),
        "peak_memory_gb": round(max(r["memory_peak_gb"] for r in rows), 2),
        "losses": [round(r["loss"], 4) for r in rows],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="scratch folder (model, data, run directories)")
    p.add_argument("--model", choices=sorted(SHAPES), default="1b")
    p.add_argument("--adapter", choices=("full", "lora"), default="full")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--backend", default="nccl", help="mlx.launch backend: nccl (NVIDIA GPUs) or ring")
    p.add_argument("--batch", type=int, default=16, help="pairs per step on one rank (strong: across all ranks)")
    p.add_argument("--scaling", choices=("strong", "weak"), default="strong")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    p.add_argument("--answer", type=int, default=256, help="tokens of each answer")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="timed steps after warm-up")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds allowed per run")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()

    work: Path = args.work
    model = work / f"llama-{args.model}"
    if not (model / "model.safetensors").exists():
        t = time.time()
        n = build_model(model, args.model)
        print(f"built {model} ({n / 1e9:.3f}B parameters) in {time.time() - t:.0f} s", flush=True)
    total = args.warmup + args.steps
    data = work / "pairs.jsonl"
    biggest = args.batch * (args.ranks if args.scaling == "weak" else 1)
    write_pairs(data, biggest * total, args.prompt, args.answer)
    seq = args.prompt + args.answer
    results: dict = {"model": args.model, "adapter": args.adapter, "scaling": args.scaling, "seq_tokens": seq}
    for ranks in (1, args.ranks):
        batch = args.batch * (ranks if args.scaling == "weak" else 1)
        preset = work / f"scaling-{args.adapter}-{batch}.toml"
        write_preset(preset, model, data, args, batch)
        out = work / f"run-{args.adapter}-{args.scaling}-{ranks}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        rows = run(preset, out, ranks, args.backend, total, args.timeout)
        results[f"ranks_{ranks}"] = {"batch_pairs": batch, **summarise(rows, args.warmup, batch * 2 * seq)}
    one, many = results["ranks_1"], results[f"ranks_{args.ranks}"]
    results["speedup"] = round(many["tokens_per_sec"] / one["tokens_per_sec"], 3)
    results["efficiency"] = round(results["speedup"] / args.ranks, 3)
    print(json.dumps(results, indent=2))
    print(
        f"DPO {args.model} {args.adapter} ({args.scaling} scaling): {one['tokens_per_sec']:,.0f} tok/s on 1, {many['tokens_per_sec']:,.0f} tok/s on {args.ranks} "
        f"-> {results['speedup']:.2f}x ({results['efficiency']:.0%} efficiency)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
