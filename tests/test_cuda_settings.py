"""The CUDA graph size the engine picks: set on CUDA before the model loads, never over a
user's own value, and never on other devices (Metal and the CPU keep MLX's defaults)."""

from __future__ import annotations

import os

import pytest

from engine import batching, cuda_settings

KEY = "MLX_MAX_MB_PER_BUFFER"


def test_on_cuda_the_engine_sets_its_buffer_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY, raising=False)
    monkeypatch.setattr(batching, "on_cuda", lambda: True)
    assert cuda_settings.apply_cuda_defaults() is True
    assert os.environ[KEY] == "50"


def test_a_value_the_user_exported_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY, "1000")
    monkeypatch.setattr(batching, "on_cuda", lambda: True)
    cuda_settings.apply_cuda_defaults()
    assert os.environ[KEY] == "1000"


def test_without_cuda_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY, raising=False)
    monkeypatch.setattr(batching, "on_cuda", lambda: False)
    assert cuda_settings.apply_cuda_defaults() is False
    assert KEY not in os.environ


def test_loading_a_model_applies_it_first(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The engine's one loading path calls it before mlx-lm touches the weights."""
    from engine import models
    from engine.errors import ModelError

    calls: list[str] = []
    monkeypatch.setattr(cuda_settings, "apply_cuda_defaults", lambda: calls.append("cuda") or False)
    with pytest.raises(ModelError):
        models.load_base(str(tmp_path / "no-such-model"))
    assert calls == ["cuda"]
