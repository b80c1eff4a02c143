"""What every benchmark runner prints, so the orchestrator can read one line per run."""

from __future__ import annotations

import json
import resource
import statistics
import time

T0 = time.time()  # process start (as near as Python lets us see it)
PREFIX = "BENCH_RESULT "


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (steadier than wall time on a shared machine)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def report(
    *, framework: str, first_step_start: float, step_times: list[float], step_cpu: list[float], peak_gb: float | None, extra: dict | None = None
) -> None:
    """Print the run's figures: start-up, first step, steady steps (median of steps 2..N)."""
    steady = step_times[1:] or step_times
    steady_cpu = step_cpu[1:] or step_cpu
    row = {
        "framework": framework,
        "startup_s": first_step_start - T0,
        "first_step_s": step_times[0] if step_times else None,
        "step_s": statistics.median(steady) if steady else None,
        "step_cpu_s": statistics.median(steady_cpu) if steady_cpu else None,
        "first_step_cpu_s": step_cpu[0] if step_cpu else None,
        "steps": len(step_times),
        "step_times": step_times,
        "framework_peak_gb": peak_gb,
        **(extra or {}),
    }
    print(PREFIX + json.dumps(row), flush=True)


def trl_step_timer(cuda: bool):
    """A transformers ``TrainerCallback`` that times each optimizer step (wall and CPU; the GPU
    synchronised at both ends on CUDA). Its ``step_times``, ``step_cpu`` and ``first`` (the
    wall clock when step 1 began) feed :func:`report`. Imported by the TRL peers only."""
    from transformers import TrainerCallback

    def sync() -> None:
        if cuda:
            import torch

            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.step_times: list[float] = []
            self.step_cpu: list[float] = []
            self.first: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            sync()
            if not self.first:
                self.first.append(time.time())
            self.t, self.c = time.perf_counter(), cpu_seconds()

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.step_times.append(time.perf_counter() - self.t)
            self.step_cpu.append(cpu_seconds() - self.c)

    return StepTimer()
