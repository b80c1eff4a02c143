"""What ``data.group_by_length`` buys: DPO steps on long-tailed pair lengths, grouped vs plain.

Real preference data is long-tailed (UltraFeedback's answers run from a few tokens to over a
thousand), so a batch of plainly shuffled pairs is padded to its longest row. This builds such
data over the benchmark checkpoint's word-level vocabulary (prompt and answer lengths drawn
from log-normal distributions, every word one token), then runs the same DPO steps with
``data.group_by_length`` on and off, alternating, and prints the ratios.

    uv run python benchmarks/length_grouping.py                      # CPU, benchmarks/.cache/cpu
    uv run python benchmarks/length_grouping.py --model /tmp/llama-1b --pairs 512 --steps 12
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "BENCH_RESULT "
sys.path.insert(0, str(HERE.parent))

from engine.blas import env_with_fast_blas  # noqa: E402  (OpenBLAS preloaded on a Linux CPU, as rlhf-tui does)


def long_tailed_pairs(model: Path, n: int, prompt_mu: float, answer_mu: float, sigma: float, cap: int, seed: int) -> list[dict]:
    """``n`` pairs whose prompt and answer word counts are log-normal (median ``e**mu``), capped."""
    rows = [json.loads(line) for line in (model / "data" / "train.jsonl").read_text().splitlines() if line.strip()]
    words = sorted({w for r in rows for w in (r["prompt"] + " " + r["chosen"] + " " + r["rejected"]).split()})
    rng = random.Random(seed)

    def text(mu: float) -> str:
        k = max(1, min(cap, int(rng.lognormvariate(mu, sigma))))
        return " ".join(rng.choice(words) for _ in range(k))

    return [{"prompt": text(prompt_mu), "chosen": text(answer_mu), "rejected": text(answer_mu)} for _ in range(n)]


def run(model: Path, data: Path, extra: list[str], a: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, str(HERE / "run_ours.py"), "--model", str(model), "--steps", str(a.steps), "--batch", str(a.batch),
        "--max-length", str(a.max_length), "--dtype", a.dtype, "--set", f"data.train={data}", *extra,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env_with_fast_blas())
    lines = [x for x in out.stdout.splitlines() if x.startswith(PREFIX)]
    if out.returncode or not lines:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len(PREFIX) :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(HERE / ".cache" / "cpu"), help="a benchmarks/make_checkpoint.py folder (built if missing)")
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=64, help="64 steps of 8 = the first window: both runs train on the same 512 rows")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each, alternating")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompt-median", type=float, default=60.0, help="median prompt words")
    ap.add_argument("--answer-median", type=float, default=120.0, help="median answer words")
    ap.add_argument("--sigma", type=float, default=0.8, help="log-normal spread of the lengths")
    ap.add_argument("--results", default="", help="append each run's figures to this JSONL file")
    ap.add_argument("--compile-from", default="", help="instead of grouping on/off: plain batches, each run_ours --compile-from value in this list (e.g. 2,1)")
    a = ap.parse_args()

    import math

    model = Path(a.model)
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, str(HERE / "make_checkpoint.py"), "--out", str(model)], check=True)
    data = Path(tempfile.mkdtemp(prefix="long-tailed-")) / "train.jsonl"
    pairs = long_tailed_pairs(model, a.pairs, math.log(a.prompt_median), math.log(a.answer_median), a.sigma, a.max_length // 2, seed=0)
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    if a.compile_from:  # plain batches, the compile policy varied
        variants = [(f"compile from {n}", ["--compile-from", n, "--set", "data.group_by_length=false"]) for n in a.compile_from.split(",")]
    else:
        variants = [("plain", ["--set", "data.group_by_length=false"]), ("grouped", ["--set", "data.group_by_length=true"])]
    got: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for _ in range(a.repeat):
        for name, extra in variants:
            r = run(model, data, extra, a)
            r["variant"] = name
            got[name].append(r)
            if a.results:
                with open(a.results, "a") as f:
                    f.write(json.dumps(r) + "\n")

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in got[name])

    base, names = variants[0][0], [name for name, _ in variants]
    print(f"\n{a.pairs} long-tailed pairs (median prompt {a.prompt_median:.0f}, answer {a.answer_median:.0f} words, sigma {a.sigma}), batch {a.batch}, {a.steps} DPO-LoRA steps, {a.repeat} runs each (medians); ratios to {base}\n")
    print(f"{'measure':<26}" + "".join(f"{n:>18}" for n in names) + "".join(f"{'ratio ' + n:>22}" for n in names[1:]))
    figures = {
        "step, wall s (median)": lambda n: med(n, "step_s"),
        "step, CPU s (median)": lambda n: med(n, "step_cpu_s"),
        "MLX peak GB": lambda n: med(n, "framework_peak_gb"),
        "all steps, wall s": lambda n: statistics.median(sum(r["step_times"]) for r in got[n]),
    }
    for label, fig in figures.items():
        vals = [fig(n) for n in names]
        print(f"{label:<26}" + "".join(f"{v:>18.4f}" for v in vals) + "".join(f"{v / vals[0]:>21.2f}x" for v in vals[1:]))


if __name__ == "__main__":
    main()
