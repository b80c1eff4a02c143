"""DPO side by side: rlhf-tui's engine vs mlx-lm-lora vs TRL, same checkpoint, data and batch.

    uv run python benchmarks/compare_dpo.py                 # everything (CPU: ~40 min on 2 busy cores)
    uv run python benchmarks/compare_dpo.py --only ours     # just our engine
    uv run python benchmarks/compare_dpo.py --table benchmarks/results/cpu.jsonl   # reprint a table

Builds the checkpoint (benchmarks/make_checkpoint.py) if missing and the peers' own
environment ``benchmarks/.venv`` must exist (see docs/performance.md: the peers are never
project dependencies). Each run is a separate process; its wall time and peak resident
memory come from the operating system (``os.wait4``), its start-up / per-step split from
the trainer's own step hooks. Results are appended as JSON lines to ``--results``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

PEER_PY = HERE / ".venv" / "bin" / "python"


def gpu_runs(model: Path, steps: int) -> list[dict]:
    """The GPU set: our engine (MLX CUDA) vs TRL (PyTorch CUDA), bf16, same checkpoint."""
    m = str(model)
    # both sides precompute the reference log-probs, so a step is the same work on each (ours
    # otherwise computes a batch's reference when it is first used: inside the step, epoch 1)
    ours = [sys.executable, str(HERE / "run_ours.py"), "--model", m, "--steps", str(steps), "--dtype", "bfloat16", "--max-length", "2048", "--precompute-ref"]
    # TRL at its best: reference log-probs precomputed (no reference pass per step, no second copy
    # for full fine-tuning), gradient checkpointing off, Liger's kernels where liger-kernel imports,
    # padding-free asked for (TRL 1.16 warns and pads; the result records what ran). TRL 1.16
    # already computes log-probs through a chunked LM head.
    trl = [sys.executable, str(HERE / "peers" / "trl_dpo.py"), "--model", m, "--steps", str(steps), "--device", "cuda", "--dtype", "bfloat16", "--max-length", "2048",
           "--precompute-ref", "--liger", "--padding-free"]
    out = []
    for adapter in ("lora", "full"):
        out += [
            {"name": f"ours/{adapter}", "group": "ours", "adapter": adapter, "cmd": ours + ["--adapter", adapter], "blas": False},
            {"name": f"trl/{adapter}", "group": "trl", "adapter": adapter, "cmd": trl + ["--adapter", adapter], "blas": False},
        ]
    lazy = [a for a in ours if a != "--precompute-ref"]
    out += [  # one lever off at a time
        {"name": "ours/lora lazy-ref", "group": "ablation", "adapter": "lora", "cmd": lazy + ["--adapter", "lora"], "blas": False},
        {"name": "ours/lora no-chunk", "group": "ablation", "adapter": "lora", "cmd": ours + ["--adapter", "lora", "--no-chunk"], "blas": False},
        {"name": "ours/full no-chunk", "group": "ablation", "adapter": "full", "cmd": ours + ["--adapter", "full", "--no-chunk"], "blas": False},
        {"name": "ours/lora plain-rows", "group": "ablation", "adapter": "lora", "cmd": ours + ["--adapter", "lora", "--plain"], "blas": False},
        {"name": "ours/full plain-rows", "group": "ablation", "adapter": "full", "cmd": ours + ["--adapter", "full", "--plain"], "blas": False},
        {"name": "ours/lora no-compile", "group": "ablation", "adapter": "lora", "cmd": ours + ["--adapter", "lora", "--no-compile"], "blas": False},
        # Adam's moments in bf16 and no float32 master copy, as TRL keeps them for a bf16 model
        {"name": "ours/full model-state", "group": "ablation", "adapter": "full", "cmd": ours + ["--adapter", "full", "--set", "train.optimizer_state=model"], "blas": False},
        # without engine.attention_split (on by default on CUDA): the fused attention backward
        # only for query lengths on the 128 tile, the written-out attention otherwise
        {"name": "ours/lora no-split", "group": "ablation", "adapter": "lora", "cmd": ours + ["--adapter", "lora", "--no-split"], "blas": False},
        {"name": "ours/full model-state no-split", "group": "ablation", "adapter": "full", "cmd": ours + ["--adapter", "full", "--set", "train.optimizer_state=model", "--no-split"], "blas": False},
    ]
    return out


def runs(model: Path, steps: int, blas_steps: int) -> list[dict]:
    m = str(model)
    ours = [sys.executable, str(HERE / "run_ours.py"), "--model", m, "--steps", str(steps)]
    mll = [str(PEER_PY), str(HERE / "peers" / "mlx_lm_lora_dpo.py"), "--model", m, "--steps", str(steps)]
    trl = [str(PEER_PY), str(HERE / "peers" / "trl_dpo.py"), "--model", m, "--steps", str(steps)]
    out = []
    for adapter in ("lora", "full"):
        out += [
            {"name": f"ours/{adapter}", "group": "ours", "adapter": adapter, "cmd": ours + ["--adapter", adapter], "blas": True},
            {"name": f"mlx-lm-lora/{adapter}", "group": "mlx-lm-lora", "adapter": adapter, "cmd": mll + ["--adapter", adapter], "blas": True},
            {"name": f"trl/{adapter}", "group": "trl", "adapter": adapter, "cmd": trl + ["--adapter", adapter], "blas": False},
        ]
    out += [
        {"name": "ours/lora plain-rows", "group": "ablation", "adapter": "lora", "cmd": ours + ["--adapter", "lora", "--plain"], "blas": True},
        {"name": "ours/sft-lora", "group": "ablation", "adapter": "lora", "cmd": ours + ["--adapter", "lora", "--algorithm", "sft"], "blas": True},
        {
            "name": "ours/lora reference-BLAS",
            "group": "blas",
            "adapter": "lora",
            # the slow BLAS is ~30x slower: few steps, and only the pairs they use (reference log-probs included)
            "cmd": [sys.executable, str(HERE / "run_ours.py"), "--model", m, "--steps", str(blas_steps), "--adapter", "lora", "--pairs", str(8 * blas_steps)],
            "blas": False,
        },
    ]
    return out


def env_for(blas: bool) -> dict[str, str]:
    from engine.blas import OPT_OUT, env_with_fast_blas

    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if not blas and sys.platform == "linux" and os.environ.get("BENCH_GPU"):
        return base
    base["TOKENIZERS_PARALLELISM"] = "false"
    if blas:
        env = env_with_fast_blas(base)
        if env is None:
            raise SystemExit("OpenBLAS not found: apt-get install libopenblas0-pthread")
        return env
    base[OPT_OUT] = "1"
    return base


def run_one(spec: dict, log_dir: Path) -> dict:
    log = log_dir / (spec["name"].replace("/", "_").replace(" ", "_") + ".log")
    t0 = time.time()
    with log.open("w") as fh:
        proc = subprocess.Popen(spec["cmd"], cwd=ROOT, env=env_for(spec["blas"]), stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    result: dict = {"name": spec["name"], "group": spec["group"], "adapter": spec["adapter"], "cmd": shlex.join(spec["cmd"]), "blas": spec["blas"]}
    result |= {"whole_s": wall, "maxrss_gb": usage.ru_maxrss / 2**20, "cpu_s": usage.ru_utime + usage.ru_stime, "exit": os.waitstatus_to_exitcode(status)}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("BENCH_RESULT "):
            result |= json.loads(line[len("BENCH_RESULT ") :])
    if "step_s" not in result:
        result["error"] = f"no result; see {log}"
    return result


def tokens_per_pair(model: Path) -> float:
    """Tokens of a pair as plain rows (prompt + BOS with each answer + EOS), from the data file."""
    rows = [json.loads(line) for line in (model / "data" / "train.jsonl").read_text().splitlines()]
    total = sum(2 * (len(r["prompt"].split()) + 1) + len(r["chosen"].split()) + 1 + len(r["rejected"].split()) + 1 for r in rows)
    return total / len(rows)


def table(results: list[dict], tok_per_step: float) -> str:
    def f(v, d=2):
        return "—" if v is None else f"{v:.{d}f}"

    by = {r["name"]: r for r in results}
    lines = [
        "| run | start-up s | step s (wall) | step CPU s | tokens/s | whole run s | whole run CPU s | peak RSS GB | MLX/torch peak GB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} ||||||||")
            continue
        tps = tok_per_step / r["step_s"] if r.get("step_s") else None
        lines.append(
            f"| {r['name']} | {f(r['startup_s'], 1)} | {f(r['step_s'])} | {f(r.get('step_cpu_s'))} | {f(tps, 0)} | {f(r['whole_s'], 1)} | {f(r.get('cpu_s'), 1)} | {f(r['maxrss_gb'])} | {f(r.get('framework_peak_gb'))} |"
        )
    ratio_lines = [
        "",
        "| ratio (ours ÷ peer; < 1 is ours faster) | step wall | step CPU | whole run | whole run CPU | peak RSS |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for adapter in ("lora", "full"):
        ours = by.get(f"ours/{adapter}")
        for peer in ("mlx-lm-lora", "trl"):
            p = by.get(f"{peer}/{adapter}")
            if not ours or not p or "error" in ours or "error" in p:
                continue
            ratio_lines.append(
                f"| ours/{adapter} ÷ {peer}/{adapter} | {ours['step_s'] / p['step_s']:.2f} | {ours['step_cpu_s'] / p['step_cpu_s']:.2f} | {ours['whole_s'] / p['whole_s']:.2f} | {ours['cpu_s'] / p['cpu_s']:.2f} | {ours['maxrss_gb'] / p['maxrss_gb']:.2f} |"
            )
    plain, shared = by.get("ours/lora plain-rows"), by.get("ours/lora")
    if plain and shared and "error" not in plain and "error" not in shared:
        ratio_lines.append(f"| shared prompt ÷ plain rows (ours/lora) | {shared['step_s'] / plain['step_s']:.2f} | {shared['step_cpu_s'] / plain['step_cpu_s']:.2f} | {shared['whole_s'] / plain['whole_s']:.2f} | {shared['cpu_s'] / plain['cpu_s']:.2f} | {shared['maxrss_gb'] / plain['maxrss_gb']:.2f} |")
    for adapter in ("lora", "full"):
        whole, nochunk = by.get(f"ours/{adapter}"), by.get(f"ours/{adapter} no-chunk")
        if whole and nochunk and "error" not in whole and "error" not in nochunk:
            peak = f"{whole['framework_peak_gb'] / nochunk['framework_peak_gb']:.2f} (MLX peak)" if whole.get("framework_peak_gb") and nochunk.get("framework_peak_gb") else "—"
            ratio_lines.append(f"| chunked ÷ written-out logits (ours/{adapter}) | {whole['step_s'] / nochunk['step_s']:.2f} | — | {whole['whole_s'] / nochunk['whole_s']:.2f} | — | {peak} |")
    for adapter in ("lora", "full"):
        ours, trl = by.get(f"ours/{adapter}"), by.get(f"trl/{adapter}")
        if ours and trl and "error" not in ours and "error" not in trl and ours.get("framework_peak_gb") and trl.get("framework_peak_gb"):
            ratio_lines.append(f"| framework peak memory, ours/{adapter} ÷ trl/{adapter} (MLX ÷ torch) | — | — | — | — | {ours['framework_peak_gb'] / trl['framework_peak_gb']:.2f} |")
    eager = by.get("ours/lora no-compile")
    if eager and shared and "error" not in eager and "error" not in shared:
        ratio_lines.append(f"| compiled ÷ eager step (ours/lora) | {shared['step_s'] / eager['step_s']:.2f} | — | {shared['whole_s'] / eager['whole_s']:.2f} | — | — |")
    slow = by.get("ours/lora reference-BLAS")
    if slow and shared and "error" not in slow and "error" not in shared:
        ratio_lines.append(f"| OpenBLAS preloaded ÷ reference BLAS (ours/lora) | {shared['step_s'] / slow['step_s']:.3f} | {shared['step_cpu_s'] / slow['step_cpu_s']:.3f} | — | — | — |")
    sft = by.get("ours/sft-lora")
    if sft and shared and "error" not in sft and "error" not in shared and sft.get("framework_peak_gb"):
        ratio_lines.append(f"| DPO-LoRA ÷ SFT-LoRA memory (MLX peak; RSS) | — | — | — | — | {shared['framework_peak_gb'] / sft['framework_peak_gb']:.2f}; {shared['maxrss_gb'] / sft['maxrss_gb']:.2f} |")
    return "\n".join(lines + ratio_lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(HERE / ".cache" / "cpu"))
    ap.add_argument("--size", default="cpu")
    ap.add_argument("--gpu", action="store_true", help="the GPU set (MLX CUDA vs TRL on CUDA, bf16); peers from this python")
    ap.add_argument("--prompt-len", type=int, default=120)
    ap.add_argument("--answer-len", type=int, default=72)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--blas-steps", type=int, default=2, help="steps of the slow reference-BLAS run")
    ap.add_argument("--only", default="", help="comma-separated run names or groups (ours, mlx-lm-lora, trl, ablation, blas)")
    ap.add_argument("--results", default=str(HERE / "results" / "cpu.jsonl"))
    ap.add_argument("--logs", default="", help="folder for each run's output (default: beside --results)")
    ap.add_argument("--table", default="", help="print the table of an earlier results file and exit")
    a = ap.parse_args()
    if a.table:
        results = [json.loads(line) for line in Path(a.table).read_text().splitlines() if line.strip()]
        print(table(results, results[0]["tokens_per_step"]))
        return
    model = Path(a.model)
    if not (model / "config.json").exists():
        from make_checkpoint import build  # type: ignore[import-not-found]

        build(model, a.size, prompt_len=a.prompt_len, answer_len=a.answer_len)
    tok_step = tokens_per_pair(model) * 8
    wanted = {w.strip() for w in a.only.split(",") if w.strip()}
    all_runs = gpu_runs(model.resolve(), a.steps) if a.gpu else runs(model.resolve(), a.steps, a.blas_steps)
    specs = [s for s in all_runs if not wanted or s["name"] in wanted or s["group"] in wanted]
    out = Path(a.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = Path(a.logs) if a.logs else out.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for spec in specs:
        print(f"running {spec['name']} ...", flush=True)
        r = run_one(spec, log_dir)
        r["tokens_per_step"] = tok_step
        results.append(r)
        with out.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        print(f"  {r['name']}: step {r.get('step_s')} s, whole {r['whole_s']:.1f} s, rss {r['maxrss_gb']:.2f} GB {r.get('error', '')}", flush=True)
    print(table(results, tok_step))


if __name__ == "__main__":
    main()
