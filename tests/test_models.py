"""Model loading through mlx-lm: quantized bases train with adapters; DoRA trains too."""

from __future__ import annotations

import mlx.core as mx
import pytest

from engine.builtin import builtin_model_path
from engine.errors import ModelError
from engine.presets import load_preset
from engine.run import Run
from tests.helpers import quick_overrides


@pytest.fixture(scope="module")
def quantized_model(tmp_path_factory):
    from mlx_lm.convert import convert

    out = tmp_path_factory.mktemp("q") / "tiny-4bit"
    convert(str(builtin_model_path()), str(out), quantize=True, q_group_size=32, q_bits=4)
    return out


def test_lora_on_a_quantized_base_trains(tmp_path, quantized_model):
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=2, model__adapter="lora", train__learning_rate=1e-2)
                      + [f"model.path={quantized_model}"])
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    assert summary["status"] == "completed", summary.get("error")
    saved = mx.load(str(tmp_path / "run" / "adapters.safetensors"))
    assert saved and all(k.endswith(("lora_a", "lora_b")) for k in saved)
    assert any(float(mx.abs(v).max().item()) > 0 for k, v in saved.items() if k.endswith("lora_b"))


def test_full_fine_tune_of_a_quantized_base_is_refused(tmp_path, quantized_model):
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=1, model__adapter="full") + [f"model.path={quantized_model}"])
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    assert summary["status"] == "failed"
    assert "quantized model can only be trained with model.adapter = 'lora' or 'dora'" in summary["error"]


def test_dora_trains_its_magnitudes(tmp_path):
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=2, model__adapter="dora", train__learning_rate=1e-2))
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    assert summary["status"] == "completed", summary.get("error")
    saved = mx.load(str(tmp_path / "run" / "adapters.safetensors"))
    assert any(k.endswith(".m") for k in saved) and any(k.endswith("lora_b") for k in saved)
    import json

    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["fine_tune_type"] == "dora"


def test_unknown_builtin_model():
    with pytest.raises(ModelError, match="unknown built-in model 'builtin:huge'"):
        builtin_model_path("huge")
