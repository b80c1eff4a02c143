"""rlhf-tui fuse: a standalone mlx-lm folder that reproduces the adapted model; the adapter
config names a Hub base by its repo id."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest

import engine
from engine.fuse import base_model_id
from engine.presets import load_preset
from engine.run import Run
from tests.helpers import cli, quick_overrides

PROMPT_AND_ANSWER = "sort: q c m f\nc f m q"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fuse")
    overrides = [*quick_overrides(tmp, steps=4), "model.adapter=lora", "train.learning_rate=0.01", "train.save_every=2"]
    run = Run(load_preset("tiny-sft", overrides), out_dir=tmp / "run")
    assert run.run()["status"] == "completed", run.summary.get("error")
    return tmp / "run"


def log_softmax(model, tokens: mx.array) -> mx.array:
    logits = model(tokens).astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def assert_same_model(fused_lp: mx.array, adapted_lp: mx.array) -> float:
    """Equal up to float32 rounding: fused W' = W + s·BA is summed in another order than
    W·x + s·B(A·x). Each of the few float32 matmuls (eps 1.2e-7, inner sizes <= 128) moves a
    value by at most ~1e-5 of its magnitude; 1e-4 of the largest |log-prob| bounds the sum of
    them with room. Where the top two tokens are closer than that, argmax may differ."""
    scale = float(mx.abs(adapted_lp).max().item())
    tol = 1e-4 * max(scale, 1.0)
    diff = float(mx.abs(fused_lp - adapted_lp).max().item())
    assert diff <= tol, f"fused vs adapted log-probs differ by {diff:.3g} (tolerance {tol:.3g})"
    top2 = mx.sort(adapted_lp, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 2 * tol
    same = mx.argmax(fused_lp, axis=-1) == mx.argmax(adapted_lp, axis=-1)
    assert bool(mx.all(mx.logical_or(same, mx.logical_not(clear))).item())
    return tol


def test_fused_folder_loads_in_mlx_lm_and_reproduces_the_adapted_model(lora_run, tmp_path):
    from mlx_lm import generate, load

    out = tmp_path / "fused"
    res = cli("fuse", str(lora_run), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "saving" in res.stderr and str(out) in res.stdout
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).exists(), name
    assert not (out / "adapters.safetensors").exists()  # standalone: nothing to attach

    fused, tok = load(str(out))
    adapted, adapted_tok = engine.load_trained(lora_run)
    base, _ = load(engine.base_model_path(lora_run))
    assert tok.chat_template and tok.chat_template == adapted_tok.chat_template  # chat template kept
    tokens = mx.array([tok.encode(PROMPT_AND_ANSWER)])
    fused_lp, adapted_lp = log_softmax(fused, tokens), log_softmax(adapted, tokens)
    tol = assert_same_model(fused_lp, adapted_lp)
    assert float(mx.abs(log_softmax(base, tokens) - fused_lp).max().item()) > 100 * tol  # the trained model, not the base
    messages = [{"role": "user", "content": "sort: q c m f"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert generate(fused, tok, prompt, max_tokens=8).strip()  # mlx-lm generates with it as it is
    provenance = json.loads((out / "fused_from.json").read_text())
    assert provenance["step"] == 4 and provenance["fine_tune_type"] == "lora"


@pytest.mark.slow
def test_fuse_a_checkpoint_by_step_and_refuse_bad_input(lora_run, tmp_path):
    from mlx_lm import load

    ckpt = engine.adapter_path(lora_run, 2)
    out = tmp_path / "step2"
    res = cli("fuse", str(lora_run), "--step", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr
    fused, tok = load(str(out))
    at_step2, _ = load(engine.base_model_path(lora_run), adapter_path=str(ckpt))
    tokens = mx.array([tok.encode(PROMPT_AND_ANSWER)])
    assert_same_model(log_softmax(fused, tokens), log_softmax(at_step2, tokens))
    assert json.loads((out / "fused_from.json").read_text())["step"] == 2

    again = cli("fuse", str(lora_run), "--out", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    missing = cli("fuse", str(lora_run), "--step", "3", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "no checkpoint for step 3" in missing.stderr and "2, 4" in missing.stderr


def test_adapter_config_names_a_hub_base_by_its_repo_id(lora_run, tmp_path):
    repo = "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    cache_path = tmp_path / "hub" / "models--mlx-community--Qwen2.5-0.5B-Instruct-4bit" / "snapshots" / "abc"
    assert base_model_id(repo, cache_path) == repo  # not the local cache path
    local = engine.base_model_path(lora_run)
    assert base_model_id(local, Path(local)) == local
    assert base_model_id("builtin:tiny-sorter", Path(local)) == local
    # the run itself (a built-in base) names the folder it loaded
    assert json.loads((lora_run / "adapter_config.json").read_text())["model"] == local


def test_the_history_screen_fuses_the_selected_run_with_progress(lora_run):
    from rlhf_tui.app import make_app
    from rlhf_tui.screens.dialogs import PromptScreen
    from rlhf_tui.screens.fuse import FuseScreen
    from rlhf_tui.screens.history import HistoryScreen
    from tests.helpers import run_pilot, wait_until

    root = lora_run.parent
    out = root / f"{lora_run.name}-fused"
    app = make_app(initial_screen=HistoryScreen(str(root)), runs_root=str(root))

    async def script(pilot):
        await pilot.press("f")
        await pilot.pause()
        assert isinstance(app.screen, PromptScreen)
        await pilot.press("enter")  # the suggested folder: <run>-fused beside the run
        await wait_until(pilot, lambda: isinstance(app.screen, FuseScreen), 10, "the fuse dialog")
        dialog = app.screen
        await wait_until(pilot, lambda: dialog.finished, 120, "the fuse to end")
        assert dialog.result == str(out), str(dialog.query_one("#fuse-status").render())
        bar = dialog.query_one("#fuse-bar")
        assert (bar.progress, bar.total) == (4, 4)
        assert "Done" in str(dialog.query_one("#fuse-status").render())
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, HistoryScreen)

    run_pilot(app, script)
    from mlx_lm import load

    fused, tok = load(str(out))
    tokens = mx.array([tok.encode(PROMPT_AND_ANSWER)])
    adapted, _ = engine.load_trained(lora_run)
    assert_same_model(log_softmax(fused, tokens), log_softmax(adapted, tokens))


@pytest.mark.slow
def test_a_qlora_run_fuses_quantized_or_dequantized(tmp_path):
    """model.quantize: the adapters were trained on the 4-bit base, so fuse quantizes the base
    as the run did; --dequantize gives base + adapters exactly, without it the fused weights
    are quantized again (as mlx_lm fuse does), hence only approximately the trained model."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import quantize_model

    from engine.fuse import fuse_run

    overrides = [*quick_overrides(tmp_path, steps=3), "model.adapter=lora", "model.quantize=4bit", "train.learning_rate=0.01"]
    run = Run(load_preset("tiny-sft", overrides), out_dir=tmp_path / "run")
    assert run.run()["status"] == "completed", run.summary.get("error")
    fuse_run(tmp_path / "run", tmp_path / "quantized")
    fuse_run(tmp_path / "run", tmp_path / "dequantized", dequantize=True)
    assert json.loads((tmp_path / "quantized" / "config.json").read_text())["quantization"]["bits"] == 4
    assert "quantization" not in json.loads((tmp_path / "dequantized" / "config.json").read_text())

    trained, tok = load(engine.base_model_path(tmp_path / "run"))  # the model as trained: 4-bit base + LoRA
    trained, _ = quantize_model(trained, {}, group_size=64, bits=4)
    load_adapters(trained, str(tmp_path / "run"))
    tokens = mx.array([tok.encode(PROMPT_AND_ANSWER)])
    dequantized, _ = load(str(tmp_path / "dequantized"))
    assert_same_model(log_softmax(dequantized, tokens), log_softmax(trained, tokens))
    quantized, _ = load(str(tmp_path / "quantized"))
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in quantized.named_modules())
