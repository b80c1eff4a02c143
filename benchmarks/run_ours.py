"""One DPO (or SFT) run of rlhf-tui's engine on the benchmark checkpoint; prints BENCH_RESULT.

    uv run python benchmarks/run_ours.py --model benchmarks/.cache/small --adapter lora
    uv run python benchmarks/run_ours.py ... --plain      # each prompt run twice (no sharing)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_seconds, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--algorithm", default="dpo", choices=("dpo", "sft"))
    ap.add_argument("--adapter", default="lora", choices=("lora", "full"))
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--plain", action="store_true", help="no shared-prompt path")
    ap.add_argument("--no-compile", action="store_true", help="train.compile=false (it only acts on a GPU)")
    ap.add_argument("--precompute-ref", action="store_true", help="dpo.precompute_ref_log_probs=true (every pair's reference before step 1, as TRL's option)")
    ap.add_argument("--no-chunk", action="store_true", help="write out the full float32 logits (engine.logprobs.CHUNK_POSITIONS = 0)")
    ap.add_argument("--no-split", action="store_true", help="engine.attention_split off (on by default; it acts on CUDA only)")
    ap.add_argument("--compile-from", type=int, default=0, help="engine.algorithms.base.COMPILE_FROM: compile a batch shape at its Nth step (0: the engine's default)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--pairs", type=int, default=0, help="train on the first N pairs only (0 = all)")
    ap.add_argument("--out", default="")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more preset override (repeatable), e.g. train.optimizer_state=model")
    a = ap.parse_args()

    import mlx.core as mx

    from engine import events as ev
    from engine.algorithms import dpo
    from engine.presets import load_preset
    from engine.run import Run

    if a.plain:
        dpo.SHARE_PROMPT = False
    if a.compile_from:
        from engine.algorithms import base

        base.COMPILE_FROM = a.compile_from
    if a.no_chunk:
        from engine import logprobs

        logprobs.CHUNK_POSITIONS = 0
    if a.no_split:
        from engine import attention_split

        attention_split.ENABLED = False
    model = Path(a.model).resolve()
    train = model / "data" / "train.jsonl"
    if a.pairs:
        subset = Path(tempfile.mkdtemp(prefix="bench-data-")) / "train.jsonl"
        subset.write_text("".join(train.read_text().splitlines(keepends=True)[: a.pairs]))
        train = subset
    cfg = load_preset(
        "tiny-dpo",
        [
            f"algorithm={a.algorithm}",
            f"model.path={model}",
            f"model.adapter={a.adapter}",
            "model.lora_rank=8",
            f"model.dtype={a.dtype}",
            f"model.max_length={a.max_length}",
            f"train.compile={'false' if a.no_compile else 'true'}",
            f"dpo.precompute_ref_log_probs={'true' if a.precompute_ref else 'false'}",
            f"data.train={train}",
            "data.eval=",
            f"train.max_steps={a.steps}",
            f"train.batch_size={a.batch}",
            "train.learning_rate=1e-5",
            "train.eval_every=0",
            "train.save_every=0",
            *a.set,
        ],
    )
    out = a.out or tempfile.mkdtemp(prefix="bench-ours-")
    run = Run(cfg, out_dir=out)
    started: list[float] = []
    cpu_marks: list[float] = []

    def watch(e: ev.Event) -> None:  # on the engine thread, right after each step's metrics
        if isinstance(e, ev.RunStarted):
            started.append(time.time())
            cpu_marks.append(cpu_seconds())
        elif isinstance(e, ev.StepMetrics):
            cpu_marks.append(cpu_seconds())

    run.subscribe(watch)
    summary = run.run()
    if summary["status"] != "completed":
        raise SystemExit(f"run {summary['status']}: {summary.get('error')}")
    rows = [r for r in run.directory.read_metrics() if "loss" in r]
    report(
        framework="rlhf-tui" + (" (plain rows)" if a.plain else "") + (" (no compile)" if a.no_compile else "") + (" (no chunk)" if a.no_chunk else "") + (" (precomputed ref)" if a.precompute_ref else "") + (" (no attention split)" if a.no_split else "") + (f" (compile from {a.compile_from})" if a.compile_from else "") + "".join(f" ({kv})" for kv in a.set),
        first_step_start=started[0],
        step_times=[float(r["step_time_s"]) for r in rows],
        step_cpu=[b - a_ for a_, b in zip(cpu_marks, cpu_marks[1:], strict=False)],
        peak_gb=mx.get_peak_memory() / 2**30,
        extra={"device": str(mx.default_device()), "final_loss": rows[-1]["loss"], "tokens_per_step_engine": sum(r["tokens_per_sec"] * r["step_time_s"] for r in rows) / len(rows)},
    )


if __name__ == "__main__":
    main()
