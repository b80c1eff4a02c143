"""A Bradley–Terry reward model: a language model trunk plus a scalar head.

The score of a prompt + completion is the head applied to the hidden state of its last
token (the completion's EOS). ``algorithm = "reward"`` trains one; every checkpoint it
writes holds the trunk's adapters (or all weights with ``model.adapter = "full"``) in
``adapters.safetensors``, their ``adapter_config.json`` (whose ``model`` names the base) and
the head in ``extra.safetensors`` (``reward_head.weight``, ``reward_head.bias``).
``load_reward_model`` reads such a checkpoint, or a run directory's latest one, for PPO.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.batching import collate
from engine.errors import ModelError
from engine.value_head import ScalarHead, hidden_size, hidden_states

HEAD_KEYS = ("reward_head.weight", "reward_head.bias")


class RewardModel(nn.Module):
    """``lm`` (an mlx-lm model, possibly with adapters) and ``head``; call with padded rows."""

    def __init__(self, lm: nn.Module, seed: int = 0) -> None:
        super().__init__()
        self.lm = lm
        self.head = ScalarHead(hidden_size(lm), seed=seed)

    def __call__(self, tokens: mx.array, lengths: mx.array) -> mx.array:
        """Scores [N] of right-padded ``tokens`` [N, L] whose real lengths are ``lengths``."""
        h = hidden_states(self.lm, tokens)
        last = mx.take_along_axis(h, (lengths - 1).astype(mx.int32)[:, None, None], axis=1).squeeze(1)
        return self.head(last)

    def head_arrays(self) -> dict[str, mx.array]:
        return {HEAD_KEYS[0]: self.head.weight, HEAD_KEYS[1]: self.head.bias}

    def load_head_arrays(self, arrays: dict[str, mx.array]) -> None:
        self.head.weight = arrays[HEAD_KEYS[0]]
        self.head.bias = arrays[HEAD_KEYS[1]]

    def score_rows(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]], chunk: int = 32) -> mx.array:
        """Scores of ``(prompt_ids, completion_ids)`` rows, no gradients."""
        out = []
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            batch = collate(part, shift=0)  # the reward model reads every token
            lengths = mx.array([len(p) + len(c) for p, c in part])
            scores = mx.stop_gradient(self(batch.tokens, lengths))
            mx.eval(scores)
            out.append(scores)
        return mx.concatenate(out) if out else mx.zeros((0,))


def find_reward_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder given itself or a run directory (its newest checkpoint: engine.run_reader)."""
    from engine.errors import RunDirError
    from engine.run_reader import resolve_weights

    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"ppo.reward_model: {p} not found (give a reward run directory or one of its checkpoints)")
    try:
        found = resolve_weights(p)
    except RunDirError:
        found = None
    if found is None or found.folder == found.run_dir:  # the head is saved with each checkpoint, not at the run's root
        raise ModelError(f"ppo.reward_model: {p} holds no reward-model checkpoint (expected checkpoints/step-*/ from an algorithm = \"reward\" run)")
    return found.folder


def load_reward_model(path: str | Path, *, trust_remote_code: bool = False) -> tuple[RewardModel, Any, Path]:
    """(frozen reward model, its tokenizer, its base model path) from a checkpoint or run dir:
    the trunk through engine.trained_model's one loader (base, ``init_from`` chain, the
    checkpoint's adapters or full weights), the head from ``extra.safetensors``."""
    from engine.trained_model import load_trained_model, read_adapter_config

    ckpt = find_reward_checkpoint(path)
    read_adapter_config(ckpt)  # a one-line ModelError for a garbled checkpoint before anything loads
    extra_file = ckpt / "extra.safetensors"
    extra = dict(mx.load(str(extra_file))) if extra_file.exists() else {}
    if not all(k in extra for k in HEAD_KEYS):
        raise ModelError(f"{ckpt}: not a reward model (no reward head in extra.safetensors; train one with algorithm = \"reward\")")
    lm, tokenizer, info = load_trained_model(ckpt, trust_remote_code=trust_remote_code)
    rm = RewardModel(lm)
    rm.load_head_arrays(extra)
    rm.freeze()
    rm.eval()
    mx.eval(rm.parameters())
    return rm, tokenizer, info.base_path
