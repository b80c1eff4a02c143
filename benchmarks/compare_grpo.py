"""A GRPO step next to TRL's GRPOTrainer (no vLLM), same checkpoint, prompts and reward.

    python3 benchmarks/compare_grpo.py --gpu --model /tmp/llama-1b          # H200: bf16, 8 x 8 x 256
    uv run python benchmarks/compare_grpo.py --model benchmarks/.cache/cpu --prompts 2 --generations 4 --new 16 --steps 3

Both sides: ``--prompts`` prompts per step (the first ``--prompt-words`` words of the
checkpoint's benchmark prompts), ``--generations`` sampled completions each of up to
``--new`` new tokens at temperature 1, the ``length`` reward (words / 10), beta 0 (no
reference model, TRL's default), full fine-tuning, one optimizer update per step, truncated
completions kept (TRL's default), Adam's state in the weights' dtype (torch's AdamW keeps it
so for TRL's bf16 model; ours: ``train.optimizer_state = "model"``; the ablation
``ours-f32state`` keeps our float32 default). Our side runs ``engine.run.Run`` (``algorithm = "grpo"``,
batched KV-cached generation); TRL's generates with transformers. The step time is the median
of the steps after the first; the first includes compilation (and, on a fresh GPU machine,
MLX's CUDA kernel JIT) on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def write_prompts(model: Path, words: int, n: int) -> Path:
    rows = [json.loads(x) for x in (model / "data" / "train.jsonl").read_text().splitlines() if x.strip()]
    out = model / "data" / "prompts.jsonl"
    with out.open("w") as fh:
        for r in (rows * (n // max(len(rows), 1) + 1))[:n]:
            fh.write(json.dumps({"prompt": " ".join(r["prompt"].split()[:words])}) + "\n")
    return out


def run_ours(a: argparse.Namespace) -> None:
    """In a child process: a GRPO run through the engine; prints BENCH_RESULT."""
    import mlx.core as mx
    from common import report

    from engine import attention_split, fused_projections, rollout
    from engine.presets import load_preset
    from engine.run import Run

    model = Path(a.model).resolve()
    tags = set(a.variant.split("+"))
    cfg = load_preset(
        "tiny-grpo",
        [
            f"model.path={model}",
            "model.adapter=full",
            f"model.dtype={a.dtype}",
            f"model.max_length={a.prompt_words + a.new + 64}",
            f"data.train={model / 'data' / 'prompts.jsonl'}",
            "data.eval=",
            "data.task_reward=",
            f"train.batch_size={a.prompts}",
            f"train.max_steps={a.steps}",
            "train.learning_rate=1e-6",
            f"train.optimizer_state={'float32' if 'f32state' in tags else 'model'}",
            "train.eval_every=0",
            "train.save_every=0",
            "train.eval_on_start=false",
            f"grpo.num_generations={a.generations}",
            "grpo.reward_functions=length",
            "grpo.beta=0.0",
            "grpo.mask_truncated_completions=false",
            f"generation.max_new_tokens={a.new}",
            "generation.temperature=1.0",
        ],
    )
    if "eager" in tags:
        rollout.COMPILED_DECODING = False
    elif "compiled" in tags:
        rollout.COMPILED_DECODING = True
    elif "fused" in tags:
        rollout.COMPILED_DECODING = fused_projections.ENABLED = True
    fused_projections.EAGER = "eagerfused" in tags
    attention_split.CHECKPOINT = "nockpt" not in tags
    out = tempfile.mkdtemp(prefix="bench-grpo-ours-")
    t0 = time.time()
    run = Run(cfg, out_dir=out)
    summary = run.run()
    rows = [r for r in run.directory.read_metrics() if "loss" in r and r.get("split", "train") == "train"]
    times = [float(r["step_time_s"]) for r in rows if r.get("step_time_s") is not None]
    lengths = [r.get("completions/mean_length") for r in rows]
    report(
        framework="rlhf-tui GRPO",
        first_step_start=t0,
        step_times=times,
        step_cpu=[],
        peak_gb=mx.get_peak_memory() / 2**30,
        extra={"status": summary["status"], "error": summary.get("error"), "mean_completion_tokens": lengths, "device": str(mx.default_device())},
    )


def child(cmd: list[str], env: dict[str, str]) -> dict:
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")]
    if not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300], "wall_s": time.time() - t0}
    r = json.loads(lines[-1][len("BENCH_RESULT ") :])
    r["wall_s"] = time.time() - t0
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(HERE / ".cache" / "cpu"))
    ap.add_argument("--gpu", action="store_true", help="bf16, TRL on CUDA with this python")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--prompt-words", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="")
    ap.add_argument("--only", default="ours,trl", help="comma-separated: ours, trl, and the ablations ours-eager / ours-compiled (decoding forced eager / compiled; by default it is eager on CUDA, compiled on Metal), ours-fused (compiled, q/k/v and gate/up fused), ours-eagerfused (eager decoding with q/k/v and gate/up fused), ours-nographs (MLX_USE_CUDA_GRAPHS=0: kernels launched one by one), ours-f32state (Adam's state in float32, our default), ours-nockpt (the attention split's pieces held, not recomputed); tags combine with '+': ours-eager+f32state")
    ap.add_argument("--peer-python", default="", help="python with TRL (default: benchmarks/.venv on the CPU, this one with --gpu)")
    ap.add_argument("--results", default="")
    ap.add_argument("--ours", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.dtype = a.dtype or ("bfloat16" if a.gpu else "float32")
    if a.ours:
        run_ours(a)
        return
    model = Path(a.model).resolve()
    write_prompts(model, a.prompt_words, max(64, a.prompts * 4))
    env = dict(os.environ)
    common = ["--model", str(model), "--prompts", str(a.prompts), "--generations", str(a.generations), "--new", str(a.new), "--steps", str(a.steps)]
    results = {}
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    for name in [x for x in only if x.startswith("ours")]:
        variant = name.partition("-")[2]
        # nographs: MLX's CUDA kernels launched one by one, not recorded into CUDA graphs
        # (MLX reads MLX_USE_CUDA_GRAPHS once per process, so it is set for the child)
        child_env = {**env, "MLX_USE_CUDA_GRAPHS": "0"} if "nographs" in variant.split("+") else env
        results[name] = child([sys.executable, __file__, "--ours", "--variant", variant, "--dtype", a.dtype, "--prompt-words", str(a.prompt_words), *common], child_env)
        print(f"{name}:", json.dumps(results[name]), flush=True)
    if "trl" in only:
        py = a.peer_python or (sys.executable if a.gpu else str(HERE / ".venv" / "bin" / "python"))
        extra = ["--device", "cuda", "--dtype", "bfloat16"] if a.gpu else ["--dtype", a.dtype]
        results["trl"] = child([py, str(HERE / "peers" / "trl_grpo.py"), *common, *extra], env)
        print("trl:", json.dumps(results["trl"]), flush=True)
    if a.results:
        with open(a.results, "a") as fh:
            for k, r in results.items():
                fh.write(json.dumps({"run": k, "prompts": a.prompts, "generations": a.generations, "new": a.new, **r}) + "\n")
    print(f"\nGRPO, {a.prompts} prompts x {a.generations} completions x <= {a.new} new tokens, {a.dtype}")
    print(f"{'run':<12} {'first step s':>12} {'step s (median 2..)':>20} {'mean new tokens':>16} {'peak GB':>8}")
    for k, r in results.items():
        if "error" in r and r.get("step_s") is None:
            print(f"{k:<12} failed: {r['error']}")
            continue
        lens = [x for x in (r.get("mean_completion_tokens") or []) if x is not None]
        peak = r.get("framework_peak_gb")
        print(f"{k:<12} {r['first_step_s']:>12.2f} {r['step_s']:>20.3f} {statistics.mean(lens) if lens else float('nan'):>16.1f} {peak if peak is not None else float('nan'):>8.2f}")
    trl = results.get("trl", {}).get("step_s")
    for k, r in results.items():
        if k.startswith("ours") and r.get("step_s") and trl:
            print(f"{k} / TRL step time: {r['step_s'] / trl:.2f}  (target <= 0.5)")


if __name__ == "__main__":
    main()
