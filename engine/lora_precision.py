"""LoRA's low-rank product in the activations' dtype, its weights kept in float32.

mlx-lm creates LoRA adapters in float32. On a bfloat16 (or 4-bit) model, ``x @ lora_a`` then
promotes the activations to float32: every adapted projection writes a float32 copy of its
input, which autodiff keeps for the backward pass (one per adapter: ~7 GB for a 1B model,
8 pairs of ~770 tokens, all seven projections of 16 layers adapted), and runs its two
matmuls in float32. PyTorch's autocast runs PEFT's adapters the other way: the weights stay
float32, the product runs in the activations' dtype. So does this: the adapters' weights
(what the optimizer updates and what a checkpoint saves) stay float32, and the forward pass
casts them, not the activations. The saved activation is then the bfloat16 input the frozen
projection keeps anyway, and the gradient reaches the float32 weights through the cast.

A float32 model is unaffected (the cast is skipped). DoRA layers are left as mlx-lm builds
them (their magnitude rescaling is computed from the weights' norms).
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx
import mlx.nn as nn

ENABLED = True  # benchmarks/gpu_step_levers.py turns it off to compare


def _forward(self: nn.Module, x: mx.array) -> mx.array:
    y = self.linear(x)
    a, b = self.lora_a, self.lora_b
    if a.dtype != x.dtype:
        a, b = a.astype(x.dtype), b.astype(x.dtype)
    z = (self.dropout(x) @ a) @ b
    return y + (self.scale * z).astype(x.dtype)


@cache
def activation_dtype_lora_class() -> type:
    """``LoRALinear`` whose low-rank product runs in the input's dtype (see the module doc).

    Built on first use: importing mlx-lm's tuner loads Rich, which the engine's modules must
    not load at import time."""
    from mlx_lm.tuner.lora import LoRALinear

    return type("ActivationDtypeLoRALinear", (LoRALinear,), {"__call__": _forward, "__doc__": "LoRALinear with its product in the input's dtype."})


def lora_in_activation_dtype(model: nn.Module) -> int:
    """Make every plain ``LoRALinear`` of ``model`` compute in its input's dtype; returns how many.

    The layers keep their parameters and names (saved adapters load in mlx-lm as they are)."""
    if not ENABLED:
        return 0
    from mlx_lm.tuner.lora import LoRALinear

    cls = activation_dtype_lora_class()
    n = 0
    for _, module in model.named_modules():
        if type(module) is LoRALinear:
            module.__class__ = cls
            n += 1
    return n
