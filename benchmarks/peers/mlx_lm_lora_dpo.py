"""mlx-lm-lora's DPO trainer on the benchmark checkpoint (run with benchmarks/.venv's python).

mlx-lm-lora 5.10 reads ``mx.device_info()["max_recommended_working_set_size"]``, a key only
Metal has, and crashes on Linux before training: this wrapper supplies the key (the wired
limit it feeds is a no-op on the CPU) and changes nothing else.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import mlx.core as mx  # noqa: E402
from common import cpu_seconds, report  # noqa: E402

_device_info = mx.device_info


def device_info_with_metal_keys():
    info = dict(_device_info())
    info.setdefault("max_recommended_working_set_size", int(info.get("memory_size", 0) or 0))
    return info


mx.device_info = device_info_with_metal_keys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", default="lora", choices=("lora", "full"))
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--mode", default="dpo", choices=("dpo", "sft"))
    a = ap.parse_args()

    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm_lora import train as mll

    step_ends: list[float] = []
    vals: list[tuple[float, float]] = []  # (when reported, seconds it took)
    starts: list[float] = []
    cpu_marks: list[float] = []

    class Timing(TrainingCallback):
        def on_train_loss_report(self, info):
            step_ends.append(time.time())
            cpu_marks.append(cpu_seconds())
            self.last = info

        def on_val_loss_report(self, info):
            vals.append((time.time(), float(info.get("val_time", 0.0))))

    cb = Timing()
    args = vars(mll.build_parser().parse_args([]))
    args.update(
        model=a.model,
        train=True,
        train_mode=a.mode,
        train_type=a.adapter,
        data=str(Path(a.model) / "data"),
        batch_size=a.batch,
        iters=a.steps,
        learning_rate=1e-5,
        optimizer="adamw",
        steps_per_report=1,
        steps_per_eval=10**9,
        val_batches=1,
        save_every=10**9,
        max_seq_length=512,
        adapter_path=tempfile.mkdtemp(prefix="bench-mll-"),
        fuse=False,
        seed=0,
    )
    for k, v in mll.CONFIG_DEFAULTS.items():
        if args.get(k) is None:
            args[k] = v
    args["lora_parameters"] = {"rank": 8, "dropout": 0.0, "scale": 20.0}
    import types

    # the first step starts when the model, the reference copy and the data are ready:
    # wrap the trainer entry point to see that moment
    from mlx_lm_lora.trainer import dpo_trainer, sft_trainer

    def timed(fn):
        def inner(*p, **k):
            starts.append(time.time())
            cpu_marks.append(cpu_seconds())
            return fn(*p, **k)

        return inner

    mll.train_dpo = timed(dpo_trainer.train_dpo) if hasattr(mll, "train_dpo") else None
    if hasattr(mll, "train_sft"):
        mll.train_sft = timed(sft_trainer.train_sft)
    mll.run(types.SimpleNamespace(**args), training_callback=cb)
    # step k's time: between consecutive reports (the first from the trainer's start),
    # minus the validation batch mlx-lm-lora runs before step 1 and before the last step
    edges = starts[:1] + step_ends
    times = [b - a_ for a_, b in zip(edges, edges[1:], strict=False)]
    for when, took in vals:
        for i in range(len(times)):
            if edges[i] <= when <= edges[i + 1]:
                times[i] -= took
    cpu = [b - a_ for a_, b in zip(cpu_marks, cpu_marks[1:], strict=False)]
    report(
        framework="mlx-lm-lora",
        step_cpu=cpu,
        first_step_start=starts[0],
        step_times=times,
        peak_gb=mx.get_peak_memory() / 2**30,
        extra={"val_time_s": sum(t for _, t in vals), "final_loss": getattr(cb, "last", {}).get("train_loss")},
    )


if __name__ == "__main__":
    main()
