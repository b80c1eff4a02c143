"""Scalar heads on a language model's trunk (reward model, PPO value head) and hidden states.

mlx-lm's decoder models keep the transformer trunk in ``model.model`` (it returns the
final, normed hidden states) and the output projection in ``model.lm_head`` or, with tied
embeddings, ``model.model.embed_tokens.as_linear``. ``hidden_and_logits`` uses that to get
both from one forward pass; for a model laid out differently (checked once per model
class against ``model(tokens)``) it falls back to two passes.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

_LAYOUT_OK: dict[type, bool] = {}


class ScalarHead(nn.Module):
    """Linear(hidden, 1) in float32, initialised N(0, 1/(hidden+1)) with zero bias (as TRL)."""

    def __init__(self, hidden: int, seed: int = 0) -> None:
        super().__init__()
        key = mx.random.key(seed)
        self.weight = mx.random.normal((1, hidden), key=key) * (1.0 / math.sqrt(hidden + 1))
        self.bias = mx.zeros((1,))

    def __call__(self, h: mx.array) -> mx.array:
        h = h.astype(mx.float32)
        return (h @ self.weight.T + self.bias).squeeze(-1)


def hidden_size(model: nn.Module) -> int:
    args = getattr(model, "args", None)
    size = getattr(args, "hidden_size", None)
    if isinstance(size, int):
        return size
    trunk = _trunk(model)
    emb = getattr(trunk, "embed_tokens", None)
    if emb is not None and hasattr(emb, "weight"):
        return int(emb.weight.shape[-1]) if not hasattr(emb, "scales") else int(emb.scales.shape[-1] * emb.group_size)
    raise TypeError(f"{type(model).__name__}: cannot tell the hidden size (no args.hidden_size)")


def _trunk(model: nn.Module) -> nn.Module:
    trunk = getattr(model, "model", None)
    if trunk is None:
        raise TypeError(f"{type(model).__name__}: no transformer trunk at model.model; scalar heads need an mlx-lm decoder model")
    return trunk


def hidden_states(model: nn.Module, tokens: mx.array) -> mx.array:
    """Final hidden states [N, L, H] (after the last norm, before the output projection)."""
    return _trunk(model)(tokens)


def _project(model: nn.Module, h: mx.array) -> mx.array:
    head = getattr(model, "lm_head", None)
    if head is not None:
        return head(h)
    return _trunk(model).embed_tokens.as_linear(h)


def _layout_ok(model: nn.Module) -> bool:
    kind = type(model)
    if kind not in _LAYOUT_OK:
        probe = mx.array([[1, 2, 3, 4]], dtype=mx.int32)
        try:
            ours = _project(model, hidden_states(model, probe)).astype(mx.float32)
            ref = model(probe).astype(mx.float32)
            _LAYOUT_OK[kind] = bool(mx.allclose(ours, ref, atol=1e-3, rtol=1e-3).item())
        except Exception:  # noqa: BLE001 - any other layout: use two passes
            _LAYOUT_OK[kind] = False
    return _LAYOUT_OK[kind]


def hidden_and_logits(model: nn.Module, tokens: mx.array) -> tuple[mx.array, mx.array]:
    """(hidden states, logits) for ``tokens``, from one pass where the layout allows."""
    if _layout_ok(model):
        h = hidden_states(model, tokens)
        return h, _project(model, h)
    return hidden_states(model, tokens), model(tokens)
