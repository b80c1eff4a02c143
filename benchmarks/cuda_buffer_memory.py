"""How the size of MLX's queued GPU work moves a DPO step's peak memory, as ratios to the default.

    python3 benchmarks/cuda_buffer_memory.py --model /tmp/llama-1b --mb 1000,200,50 \\
        --variants "lora:shared,full:shared:modelstate"

MLX's CUDA backend records operations into a CUDA graph (a "buffer") and holds every input of
every operation in it until the graph has run on the device, and the host may queue up to 10
graphs ahead of the device. A graph is closed after ``MLX_MAX_OPS_PER_BUFFER`` operations or
``MLX_MAX_MB_PER_BUFFER`` megabytes of inputs (H100/B200 defaults: 100 and 1000). So an
intermediate array that is dead after its last use can stay allocated until the graph that
used it has run: up to ten graphs' worth of inputs on top of what the backward pass needs.
This runs ``benchmarks/gpu_step_levers.py`` once per setting, each in its own process (MLX
reads the settings once), and prints step time and peak memory against the first setting.
Add ``--ops`` to vary the operation count instead, or ``--graphs`` to compare CUDA graphs
against kernels launched one by one (``MLX_USE_CUDA_GRAPHS=0``). A setting left empty leaves
the variable unset, so the engine's own choice applies (``engine.cuda_settings``: 50 MB on
CUDA since 2026-12-07, when this measured 0.64x / 0.70x MLX's default peak for LoRA / full);
1000 is MLX's own default on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gpu_step_levers import STEP_ARGS, add_step_args  # noqa: E402


def run_setting(env_key: str, value: str, a: argparse.Namespace) -> list[dict]:
    env = dict(os.environ)
    if value:
        env[env_key] = value
    else:
        env.pop(env_key, None)
    step = [x for k in STEP_ARGS for x in ("--" + k.replace("_", "-"), str(getattr(a, k)))]
    cmd = [sys.executable, str(HERE / "gpu_step_levers.py"), "--model", a.model, *step, "--variants", a.variants]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
        stdout, failure = proc.stdout, f"exit {proc.returncode}\n{proc.stderr[-2000:]}" if proc.returncode else ""
    except subprocess.TimeoutExpired as e:  # keep the variants that finished, and the other settings
        out = e.stdout or ""
        stdout, failure = out.decode() if isinstance(out, bytes) else out, f"no result within --timeout {a.timeout} s"
    rows = [json.loads(line[6:]) for line in stdout.splitlines() if line.startswith("LEVER ")]
    setting = f"{env_key}={value or 'unset (engine)'}"
    if failure:
        print(f"{setting}: {failure}", file=sys.stderr)
    for r in rows:
        r["setting"] = setting
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--mb", default="", help="MLX_MAX_MB_PER_BUFFER values, comma-separated ('' = unset: the engine's choice; 1000 = MLX's H100 default)")
    ap.add_argument("--ops", default="", help="MLX_MAX_OPS_PER_BUFFER values instead")
    ap.add_argument("--graphs", action="store_true", help="MLX_USE_CUDA_GRAPHS unset and 0 instead (kernels launched one by one)")
    ap.add_argument("--variants", default="lora:shared,full:shared:modelstate")
    add_step_args(ap)
    ap.add_argument("--timeout", type=int, default=400)
    ap.add_argument("--results", default="")
    a = ap.parse_args()
    if a.graphs:
        env_key, values = "MLX_USE_CUDA_GRAPHS", ",0"
    elif a.ops:
        env_key, values = "MLX_MAX_OPS_PER_BUFFER", a.ops
    else:
        env_key, values = "MLX_MAX_MB_PER_BUFFER", a.mb or "1000,200,50"
    rows: list[dict] = []
    for value in values.split(","):
        got = run_setting(env_key, value.strip(), a)
        rows += got
        for r in got:
            print("BUFFER " + json.dumps(r), flush=True)
            if a.results:
                with open(a.results, "a") as fh:
                    fh.write(json.dumps(r) + "\n")
    base = {}
    print(f"\n{'setting':<30} {'variant':<28} {'step s':>7} {'peak GB':>8} {'step x':>7} {'peak x':>7}")
    for r in rows:
        b = base.setdefault(r["variant"], r)
        print(f"{r['setting']:<30} {r['variant']:<28} {r['step_s']:>7.3f} {r['peak_gb']:>8.2f} {r['step_s'] / b['step_s']:>7.2f} {r['peak_gb'] / b['peak_gb']:>7.2f}")


if __name__ == "__main__":
    main()
