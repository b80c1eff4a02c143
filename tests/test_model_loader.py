"""engine.trained_model: one loader for base + init_from chain + a run's own weights.

What a user would notice: a run loaded back scores text exactly as the model did at the end
of training (LoRA, full fine-tune, and a run started from another run that itself started
from a third), and anything that is not trained weights fails in one line naming the folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import pytest

import engine
from engine.errors import EngineError, ModelError, RunDirError
from engine.presets import load_preset
from engine.run import Run
from engine.trained_model import apply_trained_weights, load_trained_model
from tests.helpers import small_data

TEXT = "sort: q c m f\nc f m q"


def log_softmax(model, tokens: mx.array) -> mx.array:
    logits = model(tokens).astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def assert_same_logprobs(got: mx.array, want: mx.array, what: str) -> None:
    """The same computation on the same weights: only float32 rounding may differ (and the
    loaded LoRA model computes W·x + s·B(A·x) as training did). 1e-5 of the largest |log-prob|
    bounds a few float32 matmuls of inner size <= 128 (eps 1.2e-7 each) with room."""
    tol = 1e-5 * max(float(mx.abs(want).max().item()), 1.0)
    diff = float(mx.abs(got - want).max().item())
    assert diff <= tol, f"{what}: log-probs differ by {diff:.3g} (tolerance {tol:.3g})"


def differ(a: mx.array, b: mx.array) -> float:
    return float(mx.abs(a - b).max().item())


def train(tmp: Path, name: str, *extra: str, preset: str = "tiny-sft") -> Run:
    train_file, _ = small_data(tmp, n_train=16, n_eval=4)
    overrides = [f"data.train={train_file}", "data.eval=", "train.batch_size=4", "train.max_steps=2",
                 "train.eval_every=0", "train.save_every=0", "train.learning_rate=0.02", *extra]
    run = Run(load_preset(preset, overrides), out_dir=tmp / name)
    assert run.run()["status"] == "completed", run.summary.get("error")
    run.ctx.model.eval()
    return run


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Run]:
    """r0 (LoRA) <- r1 (DoRA, model.init_from = r0) <- r2 (LoRA, model.init_from = r1)."""
    tmp = tmp_path_factory.mktemp("loader")
    r0 = train(tmp, "r0", "model.adapter=lora", "model.lora_rank=4")
    r1 = train(tmp, "r1", "model.adapter=dora", "model.lora_rank=4", f"model.init_from={tmp / 'r0'}")
    r2 = train(tmp, "r2", "model.adapter=lora", "model.lora_rank=4", f"model.init_from={tmp / 'r1'}", preset="tiny-dpo")
    return {"r0": r0, "r1": r1, "r2": r2}


def tokens_of(tokenizer) -> mx.array:
    return mx.array([tokenizer.encode(TEXT)])


def test_a_lora_run_loads_as_the_model_at_the_end_of_training(chain):
    run = chain["r0"]
    model, tok, info = load_trained_model(run.directory.path)
    tokens = tokens_of(tok)
    assert_same_logprobs(log_softmax(model, tokens), log_softmax(run.ctx.model, tokens), "r0 loaded vs trained")
    assert info.step == 2 and info.folder == run.directory.path / "checkpoints" / "step-000002"
    assert info.fine_tune_type == "lora" and info.init_from == () and info.run_dir == run.directory.path
    public, _ = engine.load_trained(run.directory.path)  # the public API gives the same model
    assert_same_logprobs(log_softmax(public, tokens), log_softmax(model, tokens), "engine.load_trained")
    from mlx_lm import load

    plain, _ = load(engine.base_model_path(run.directory.path))
    assert differ(log_softmax(plain, tokens), log_softmax(model, tokens)) > 1e-2  # trained, not the base


def test_an_init_from_chain_applies_every_run_it_started_from(chain):
    """r2 started from r1, which started from r0: loading r2 gives r2's trained model, which
    the base + r2's adapters alone (or + r1 + r2) is not."""
    from mlx.utils import tree_unflatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import load_adapters

    r0, r1, r2 = (chain[k].directory.path for k in ("r0", "r1", "r2"))
    model, tok, info = load_trained_model(r2)
    tokens = tokens_of(tok)
    got = log_softmax(model, tokens)
    assert_same_logprobs(got, log_softmax(chain["r2"].ctx.model, tokens), "r2 loaded vs trained")
    assert [p.resolve() for p in info.init_from] == [(r / "checkpoints" / "step-000002").resolve() for r in (r0, r1)]
    assert info.fine_tune_type == "lora" and info.adapter_config["init_from"] == str(r1.resolve())

    def by_hand(folders: list[Path]) -> mx.array:
        """mlx-lm alone: the base, each folder's adapters loaded and fused in turn, the last unfused."""
        m, _ = load(engine.base_model_path(r2))
        for i, folder in enumerate(folders):
            load_adapters(m, str(folder))
            if i < len(folders) - 1:
                m.update_modules(tree_unflatten([(n, x.fuse()) for n, x in m.named_modules() if hasattr(x, "fuse")]))
        m.eval()
        return log_softmax(m, tokens)

    assert_same_logprobs(by_hand([r0, r1, r2]), got, "base + r0 + r1 + r2 by hand")
    assert differ(by_hand([r2]), got) > 1e-3  # without where it started it is another model
    assert differ(by_hand([r1, r2]), got) > 1e-3

    # the lower-level step training uses for model.init_from bakes the whole chain in
    start, _ = load(engine.base_model_path(r2))
    assert apply_trained_weights(start, r1) == list(info.init_from)
    start.eval()
    assert not any(hasattr(m, "fuse") for _, m in start.named_modules())  # fused: no adapter layers left
    assert_same_logprobs(log_softmax(start, tokens), log_softmax(load_trained_model(r1)[0], tokens), "r1 baked in vs r1 loaded")


def test_a_full_fine_tune_run_loads_its_weights(tmp_path):
    run = train(tmp_path, "full", "model.adapter=full", "train.learning_rate=0.001")
    model, tok, info = load_trained_model(run.directory.path, step=2)
    assert info.fine_tune_type == "full"
    from mlx.utils import tree_flatten

    saved = mx.load(str(info.folder / "adapters.safetensors"))
    params = dict(tree_flatten(model.parameters()))
    assert saved and all(mx.array_equal(params[k], v).item() for k, v in saved.items())
    tokens = tokens_of(tok)
    assert_same_logprobs(log_softmax(model, tokens), log_softmax(run.ctx.model, tokens), "full loaded vs trained")


def test_a_qlora_run_loads_on_its_quantized_base_and_dtype_is_a_choice(chain, tmp_path):
    """model.quantize: the adapters were trained on the 4-bit base, which the loader rebuilds
    (and records in the model config, as fuse needs); dtype is only applied when asked."""
    import mlx.nn as nn

    run = train(tmp_path, "qlora", "model.adapter=lora", "model.quantize=4bit")
    model, tok, info = load_trained_model(run.directory.path)
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())
    assert info.config["quantization"]["bits"] == 4
    tokens = tokens_of(tok)
    assert_same_logprobs(log_softmax(model, tokens), log_softmax(run.ctx.model, tokens), "qlora loaded vs trained")

    # a checkpoint copied out of its run: its adapter_config.json says the base was quantized
    loose = tmp_path / "loose-qlora"
    shutil.copytree(info.folder, loose)
    assert json.loads((loose / "adapter_config.json").read_text())["quantize"] == "4bit"
    loose_model, _, _ = load_trained_model(loose)
    assert_same_logprobs(log_softmax(loose_model, tokens), log_softmax(run.ctx.model, tokens), "qlora copied out of its run")
    # the labelling sampler starts from the same 4-bit base the adapters were trained on
    from engine.sampling import CompletionWriter, ModelChoice

    writer = CompletionWriter(ModelChoice("qlora", "builtin:tiny-sorter", str(run.directory.path), str(run.directory.path)))
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in writer.model.named_modules())

    r0 = chain["r0"].directory.path
    stored, _, _ = load_trained_model(r0)
    assert stored.layers[0].mlp.up_proj.linear.weight.dtype == mx.float32  # the built-in base as stored
    half, _, _ = load_trained_model(r0, dtype="bfloat16")  # what scoring asks for with model.dtype
    assert half.layers[0].mlp.up_proj.linear.weight.dtype == mx.bfloat16


def one_line(err: pytest.ExceptionInfo, *names: object) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    for name in names:
        assert str(name) in text, f"{name} not in {text!r}"
    return text


def test_what_is_not_trained_weights_fails_in_one_line_naming_it(chain, tmp_path):
    r0 = chain["r0"].directory.path
    with pytest.raises(RunDirError) as err:
        load_trained_model(tmp_path / "nowhere")
    one_line(err, tmp_path / "nowhere", "not found")
    with pytest.raises(RunDirError) as err:
        load_trained_model(r0, step=7)
    one_line(err, r0, "no checkpoint for step 7")

    loose = tmp_path / "loose"  # a checkpoint copied out of its run: the base is the one it names
    shutil.copytree(r0 / "checkpoints" / "step-000002", loose)
    model, tok, info = load_trained_model(loose)
    tokens = tokens_of(tok)
    assert info.run_dir is None and info.step is None
    assert_same_logprobs(log_softmax(model, tokens), log_softmax(chain["r0"].ctx.model, tokens), "a loose checkpoint")

    config_file = loose / "adapter_config.json"
    good = config_file.read_text()
    config_file.write_text("{not json")
    with pytest.raises(ModelError) as err:
        load_trained_model(loose)
    one_line(err, config_file, "not an mlx-lm adapter config")

    acfg = json.loads(good)
    acfg["lora_parameters"]["rank"] = 8  # adapters of another shape than the config says
    config_file.write_text(json.dumps(acfg))
    with pytest.raises(ModelError) as err:
        load_trained_model(loose)
    one_line(err, loose / "adapters.safetensors", "do not fit")

    config_file.write_text(good)
    (loose / "adapters.safetensors").write_bytes(b"\x00garbled")
    with pytest.raises(ModelError) as err:
        load_trained_model(loose)
    one_line(err, loose / "adapters.safetensors", "cannot read")

    shutil.copytree(r0 / "checkpoints" / "step-000002", tmp_path / "orphan")
    acfg = json.loads(good)
    acfg["init_from"] = str(tmp_path / "gone")  # it started from weights that are no longer there
    (tmp_path / "orphan" / "adapter_config.json").write_text(json.dumps(acfg))
    with pytest.raises(ModelError) as err:
        load_trained_model(tmp_path / "orphan")
    one_line(err, tmp_path / "gone", "model.init_from")
    acfg["init_from"] = str(tmp_path / "orphan")  # edited by hand into a loop: an error, not a hang
    (tmp_path / "orphan" / "adapter_config.json").write_text(json.dumps(acfg))
    with pytest.raises(ModelError) as err:
        load_trained_model(tmp_path / "orphan")
    one_line(err, tmp_path / "orphan", "comes back to itself")

    with pytest.raises(EngineError) as err:  # the fuse, chat and API entries say the same
        engine.load_trained(tmp_path / "nowhere")
    one_line(err, tmp_path / "nowhere")
