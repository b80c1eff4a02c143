"""model.dtype: half-precision weights still learn, and log-probs and losses stay float32."""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

import engine
from engine.logprobs import shifted_token_logprobs
from tests.helpers import ROOT

DATA = ROOT / "presets" / "data"


def slice_jsonl(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


@pytest.fixture(scope="module")
def builtin_model():
    from mlx_lm import load

    from engine.models import resolve_model_path

    return load(str(resolve_model_path("builtin:tiny-sorter")))


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_log_probs_are_float32_for_half_precision_weights(builtin_model, dtype):
    model, tok = builtin_model
    tokens = mx.array([tok.encode("sort: q c m f\nc f m q")])
    lp32, logits32 = shifted_token_logprobs(model, tokens)
    half = type(model)(model.args)
    half.load_weights(list(tree_flatten(model.parameters())))
    half.set_dtype(dtype)
    assert {v.dtype for _, v in tree_flatten(half.parameters())} == {dtype}
    lp, logits = shifted_token_logprobs(half, tokens)
    assert lp.dtype == mx.float32 and logits.dtype == mx.float32
    # Rounding to a p-bit format moves each weight and activation by at most u = 2**-p
    # relative, so the logits (and the log-probs) move by some u times their magnitude M.
    # Measured on x86 with and without OpenBLAS (the same to 5 digits): 0.119 for bfloat16
    # (2.2 u*M) and 0.0071 for float16 (1.0 u*M); the previous built-in model gave 1.4 and 5.5
    # u*M. 16 u*M leaves room for other models and kernels; a shifted position is off by nats.
    u = 2.0**-8 if dtype == mx.bfloat16 else 2.0**-11
    tol = 16 * u * float(mx.abs(logits32).max().item())
    assert mx.abs(lp - lp32).max().item() <= tol
    top = mx.sort(logits32, axis=-1)
    clear = (top[..., -1] - top[..., -2]) > 2 * tol  # there greedy decoding picks the same token
    assert mx.all(mx.where(clear, logits.argmax(-1) == logits32.argmax(-1), True)).item()
    assert float(mx.exp(lp).max().item()) <= 1.0


@pytest.mark.slow
def test_a_bfloat16_dpo_run_learns_the_builtin_task(tmp_path):
    train = slice_jsonl(DATA / "sort_train.jsonl", tmp_path / "train.jsonl", 160)
    evl = slice_jsonl(DATA / "sort_eval.jsonl", tmp_path / "eval.jsonl", 64)
    seen: dict[str, set] = {}

    def on_event(event):
        if isinstance(event, engine.RunStarted):
            seen["w0"] = run_holder[0].weights_snapshot()
        if isinstance(event, engine.StepMetrics) and event.step == 1:
            seen["weights"] = {v.dtype for _, v in tree_flatten(run_holder[0].ctx.model.trainable_parameters())}
            seen["w1"] = run_holder[0].weights_snapshot()

    run_holder: list = []
    cfg = engine.load_preset(
        "tiny-dpo",
        overrides=[
            "model.dtype=bfloat16",
            "train.max_steps=24",
            "train.eval_every=0",
            "train.save_every=0",
            f"data.train={train}",
            f"data.eval={evl}",
        ],
    )
    run = engine.Run(cfg, out_dir=tmp_path / "run")
    run_holder.append(run)
    run.subscribe(on_event)
    run.run()
    assert run.status == "completed", run.summary.get("error")
    assert seen["weights"] == {mx.bfloat16}

    # Adam's first update (MLX: no bias correction) is lr * (1 - b1) g / sqrt((1 - b2) g^2)
    # = lr * 0.1 / sqrt(0.001) per weight at most, plus rounding the result to bfloat16
    lr = cfg.train.learning_rate
    first_step = lr * 0.1 / math.sqrt(0.001)
    for name, w0 in seen["w0"].items():
        w0f, w1f = w0.astype(mx.float32), seen["w1"][name].astype(mx.float32)
        bound = first_step * 1.001 + (mx.abs(w0f) + first_step) * 2.0**-8 + 1e-7
        assert mx.all(mx.abs(w1f - w0f) <= bound).item(), f"{name}: first bf16 update larger than the learning rate"

    rows = engine.read_metrics(tmp_path / "run")
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1
    # before training every pair ties (margin 0 up to rounding): DPO loss ln 2, chance accuracy 0.5
    late = rows[-8:]
    assert sum(r["loss"] for r in late) / len(late) < math.log(2) - 0.2
    assert sum(r["rewards/accuracies"] for r in late) / len(late) > 0.7
    final = engine.read_metrics(tmp_path / "run", "eval")[-1]
    assert final["eval/rewards/margins"] > 0.1
    assert final["eval/rewards/accuracies"] > 0.6
    saved = mx.load(str(tmp_path / "run" / "adapters.safetensors"))
    assert {v.dtype for v in saved.values()} == {mx.bfloat16}


def test_optimizer_state_is_float32_with_bfloat16_weights(tmp_path):
    train = slice_jsonl(DATA / "sort_train.jsonl", tmp_path / "train.jsonl", 16)
    cfg = engine.load_preset(
        "tiny-dpo",
        overrides=["model.dtype=bfloat16", "train.max_steps=1", "train.batch_size=8", f"data.train={train}", "data.eval="],
    )
    run = engine.Run(cfg, out_dir=tmp_path / "run")
    run.run()
    assert run.status == "completed", run.summary.get("error")
    state = mx.load(str(next((tmp_path / "run" / "checkpoints").iterdir()) / "optimizer.safetensors"))
    moments = {k: v.dtype for k, v in state.items() if k.endswith((".m", ".v"))}
    assert moments and set(moments.values()) == {mx.float32}
    masters = {k: v.dtype for k, v in state.items() if k.endswith(".master")}
    assert masters and set(masters.values()) == {mx.float32}  # float32 master weights


def test_optimizer_state_in_the_models_dtype_holds_a_third_of_the_bytes(tmp_path):
    # train.optimizer_state = model: moments in bf16 and no master copy, as PyTorch/TRL keep
    # AdamW's state for a bf16 model: 2 + 2 bytes a trained parameter against 4 + 4 + 4
    train = slice_jsonl(DATA / "sort_train.jsonl", tmp_path / "train.jsonl", 16)
    states = {}
    for mode in ("float32", "model"):
        cfg = engine.load_preset(
            "tiny-dpo",
            overrides=["model.dtype=bfloat16", "train.max_steps=1", "train.batch_size=8", f"data.train={train}", "data.eval=",
                       f"train.optimizer_state={mode}"],
        )
        run = engine.Run(cfg, out_dir=tmp_path / mode)
        run.run()
        assert run.status == "completed", run.summary.get("error")
        states[mode] = mx.load(str(next((tmp_path / mode / "checkpoints").iterdir()) / "optimizer.safetensors"))
    small = states["model"]
    assert {v.dtype for k, v in small.items() if k.endswith((".m", ".v"))} == {mx.bfloat16}
    assert not [k for k in small if k.endswith(".master")]
    params = sum(v.size for k, v in states["float32"].items() if k.endswith(".master"))
    nbytes = {mode: sum(v.nbytes for k, v in s.items() if k.endswith((".m", ".v", ".master"))) for mode, s in states.items()}
    assert nbytes["float32"] == 12 * params and nbytes["model"] == 4 * params
