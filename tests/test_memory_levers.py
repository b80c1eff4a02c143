"""Memory levers: gradient accumulation equals the whole batch, gradient checkpointing for
every algorithm, train.epochs, model.quantize at load, and model.dtype = auto."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from engine.presets import load_preset
from engine.run import Run
from tests.helpers import metrics_rows, quick_overrides


def data_dir(tmp_path, name: str):
    folder = tmp_path / f"data-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def one_step(tmp_path, preset: str, name: str, *extra: str) -> tuple[Run, dict[str, mx.array]]:
    cfg = load_preset(preset, [*quick_overrides(data_dir(tmp_path, name), steps=1), "train.optimizer=sgd",
                               "train.learning_rate=0.5", "train.compile=false", "data.task_reward=",
                               "train.eval_on_start=false", "data.eval=", *extra])
    run = Run(cfg, out_dir=tmp_path / name)
    summary = run.run()
    assert summary["status"] == "completed", summary
    weights = {k: mx.array(v) for k, v in tree_flatten(run.ctx.model.trainable_parameters())}
    return run, weights


def initial_weights(tmp_path, preset: str) -> dict[str, mx.array]:
    from engine.models import load_policy

    cfg = load_preset(preset, quick_overrides(data_dir(tmp_path, "init"), steps=1))
    mx.random.seed(cfg.train.seed)  # as the run seeds before it loads: the same LoRA initialisation
    return dict(tree_flatten(load_policy(cfg).model.trainable_parameters()))


@pytest.mark.parametrize("preset", ["tiny-dpo", "tiny-sft"])
def test_accumulated_micro_batches_make_the_whole_batchs_update(tmp_path, preset):
    # SGD: the update is lr * gradient, so equal updates mean equal gradients
    w0 = initial_weights(tmp_path, preset)
    whole_run, whole = one_step(tmp_path, preset, "whole")
    split_run, split = one_step(tmp_path, preset, "split", "train.grad_accumulation_steps=3")  # 4 rows: 2 + 1 + 1
    for k in whole:
        d_whole, d_split = whole[k] - w0[k], split[k] - w0[k]
        scale = float(mx.abs(d_whole).max().item())
        if scale == 0:
            continue
        # float32 sums in another order differ by ~1e-6 of the values; a mis-weighted chunk by tens of percent
        assert float(mx.abs(d_whole - d_split).max().item()) <= 1e-3 * scale, k
    a, b = metrics_rows(tmp_path / "whole")[-1], metrics_rows(tmp_path / "split")[-1]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)


def test_accumulation_where_an_algorithm_cannot_is_one_line(tmp_path, monkeypatch):
    from engine.algorithms.ppo import Ppo

    # every built-in algorithm accumulates now; an algorithm that does not is refused in one line
    monkeypatch.setattr(Ppo, "supports_grad_accumulation", False)
    cfg = load_preset("tiny-ppo", [*quick_overrides(data_dir(tmp_path, "d"), steps=1), "train.grad_accumulation_steps=2"])
    summary = Run(cfg, out_dir=tmp_path / "r").run()
    assert summary["status"] == "failed" and "train.grad_accumulation_steps = 2: ppo does not accumulate" in summary["error"]


@pytest.mark.parametrize("preset", ["tiny-sft", "tiny-reward", "tiny-dpo"])
def test_gradient_checkpointing_changes_memory_not_numbers(tmp_path, preset):
    _, plain = one_step(tmp_path, preset, "plain")
    _, ckpt = one_step(tmp_path, preset, "ckpt", "train.grad_checkpoint=true")
    a, b = metrics_rows(tmp_path / "plain")[-1], metrics_rows(tmp_path / "ckpt")[-1]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_epochs_decide_the_number_of_steps(tmp_path):
    # quick_overrides: 64 training pairs at batch size 4 -> 16 steps an epoch
    cfg = load_preset("tiny-dpo", [*quick_overrides(data_dir(tmp_path, "d"), steps=1000), "train.epochs=0.5", "train.compile=false", "data.task_reward=", "train.eval_on_start=false", "data.eval="])
    summary = Run(cfg, out_dir=tmp_path / "r").run()
    assert summary["status"] == "completed"
    assert [r["step"] for r in metrics_rows(tmp_path / "r")][-1] == 8


def test_quantize_4bit_trains_lora_on_a_quantized_base(tmp_path):
    import mlx.nn as nn

    run, _ = one_step(tmp_path, "tiny-sft", "q4", "model.quantize=4bit", "model.adapter=lora")
    kinds = {type(m).__name__ for _, m in run.ctx.model.named_modules()}
    assert "QuantizedLinear" in kinds or any(isinstance(m, nn.QuantizedLinear) for _, m in run.ctx.model.named_modules())
    assert mx.isfinite(mx.array(metrics_rows(tmp_path / "q4")[-1]["loss"])).item()


def test_quantize_with_full_fine_tuning_is_one_line(tmp_path):
    cfg = load_preset("tiny-sft", [*quick_overrides(data_dir(tmp_path, "d"), steps=1), "model.quantize=8bit", "model.adapter=full"])
    summary = Run(cfg, out_dir=tmp_path / "r").run()
    assert summary["status"] == "failed" and "model.quantize = '8bit' needs model.adapter = 'lora' or 'dora'" in summary["error"]


def test_dtype_auto_keeps_a_bf16_checkpoint_bf16(tmp_path):
    from engine.config import config_from_dict
    from engine.models import load_policy
    from tests.real_formats import write_model

    folder = write_model(tmp_path / "m", "chatml", "qwen2")
    weights = mx.load(str(folder / "model.safetensors"))
    mx.save_safetensors(str(folder / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in weights.items()})
    cfg = config_from_dict({"model": {"path": str(folder)}})
    assert cfg.model.dtype == "auto"
    model = load_policy(cfg).model
    base = [v for k, v in tree_flatten(model.parameters()) if "lora" not in k and v.dtype in (mx.float32, mx.bfloat16)]
    assert base and all(v.dtype == mx.bfloat16 for v in base)


def test_a_download_reports_megabytes_and_rate_while_it_runs(tmp_path):
    import time

    from engine.models import watch_download

    target = tmp_path / "blob.incomplete"

    def fetch():
        with target.open("wb") as fh:
            for _ in range(4):
                fh.write(b"x" * 2**20)
                fh.flush()
                time.sleep(0.05)

    seen: list[tuple[str, int, int]] = []
    watch_download(fetch, lambda: target.stat().st_size if target.exists() else 0, 4 * 2**20, "downloading org/model", lambda *a: seen.append(a), poll_s=0.02)
    name, done, total = seen[-1]
    assert (done, total) == (4, 4) and name.startswith("downloading org/model: 4.0 of 4 MB at ") and name.endswith(" MB/s")
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)  # never goes backwards
