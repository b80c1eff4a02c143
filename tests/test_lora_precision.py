"""LoRA on a bfloat16 model computes its low-rank product in bfloat16 while its weights (what
the optimizer updates and a checkpoint saves) stay float32, as PyTorch autocast runs PEFT's
adapters: no float32 copy of every adapted projection's input is kept for the backward pass.

The bfloat16 product differs from the float32 one by bfloat16 rounding: the rank-r
intermediate and the product are each rounded to 8 significant bits (relative 2^-9 each),
so outputs and gradients agree to ~2^-8 of their scale; the bound below is 2^-5 (a wrong
scale or a dropped term moves them by 100%). A float32 model is untouched: bit-identical."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.lora import LoRALinear

from engine.builtin import builtin_model_path
from engine.lora_precision import activation_dtype_lora_class
from engine.models import load_policy
from engine.presets import load_preset


def _policy(adapter: str, dtype: str):
    cfg = load_preset("tiny-dpo", [f"model.path={builtin_model_path()}", f"model.adapter={adapter}", f"model.dtype={dtype}"])
    return load_policy(cfg).model


def _adapters(model):
    return [m for _, m in model.named_modules() if isinstance(m, LoRALinear | DoRALinear)]


def test_a_bf16_models_lora_layers_compute_in_bf16_with_float32_weights():
    model = _policy("lora", "bfloat16")
    layers = _adapters(model)
    assert layers and all(type(m) is activation_dtype_lora_class() for m in layers)
    assert {v.dtype for _, v in tree_flatten(model.trainable_parameters())} == {mx.float32}
    assert all(k.endswith(("lora_a", "lora_b")) for k, _ in tree_flatten(model.trainable_parameters()))  # names as mlx-lm saves them
    dora = _policy("dora", "bfloat16")
    assert all(type(m) is DoRALinear for m in _adapters(dora))  # DoRA as mlx-lm builds it


def _pair(dtype):
    mx.random.seed(0)
    base = nn.Linear(32, 24, bias=False)
    base.set_dtype(dtype)
    ref = LoRALinear.from_base(base, r=4, scale=2.0)
    ref.lora_b = mx.random.normal(ref.lora_b.shape) * 0.1  # a trained adapter: the product is not zero
    ours = LoRALinear.from_base(base, r=4, scale=2.0)
    ours.update(ref.parameters())
    ours.__class__ = activation_dtype_lora_class()
    x = (mx.random.normal((3, 5, 32))).astype(dtype)
    return ref, ours, x


def _grads(layer, x):
    def loss(m):
        return (m(x).astype(mx.float32) ** 2).sum()

    layer.freeze(keys=["linear"], strict=False)
    return dict(tree_flatten(nn.value_and_grad(layer, loss)(layer)[1]))


def test_float32_model_unchanged_bit_for_bit():
    ref, ours, x = _pair(mx.float32)
    assert mx.array_equal(ref(x), ours(x)).item()


def test_bf16_output_and_gradients_agree_with_the_float32_product_to_bf16_rounding():
    ref, ours, x = _pair(mx.bfloat16)
    a, b = np.array(ref(x).astype(mx.float32)), np.array(ours(x).astype(mx.float32))
    assert ours(x).dtype == mx.bfloat16
    assert np.abs(a - b).max() <= 2**-5 * np.abs(a).max()
    g_ref, g_ours = _grads(ref, x), _grads(ours, x)
    assert set(g_ref) == set(g_ours) == {"lora_a", "lora_b"}
    for k in g_ref:
        assert g_ours[k].dtype == mx.float32  # the optimizer sees float32 gradients for float32 weights
        r, o = np.array(g_ref[k]), np.array(g_ours[k])
        assert np.abs(r - o).max() <= 2**-5 * np.abs(r).max(), k
        assert np.abs(r).max() > 0


def test_a_bf16_lora_runs_checkpoint_keeps_float32_adapters(tmp_path):
    from engine.run import Run

    cfg = load_preset("tiny-dpo", ["model.adapter=lora", "model.dtype=bfloat16", "train.max_steps=2", "train.eval_every=0",
                                   "train.eval_on_start=false", "data.eval=", "data.task_reward=", "train.save_every=2"])
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    assert summary["status"] == "completed", summary
    saved = mx.load(str(next((tmp_path / "run").rglob("adapters.safetensors"))))
    assert saved and {v.dtype for v in saved.values()} == {mx.float32}
