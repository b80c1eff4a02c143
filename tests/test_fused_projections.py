"""Fused sibling projections while decoding (engine.fused_projections).

A compiled rollout runs q/k/v and gate/up as one matmul each. The tokens and log-probs must
be what the unfused compiled rollout gives, for a plain model, Qwen2 (biases on q/k/v), LoRA
in float32 and in the activations' dtype; and afterwards the model must hold the same
weights, its layers their own classes, and train and save as before.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from engine import fused_projections
from engine.builtin import builtin_model_path
from engine.compile import release_compiled
from engine.fused_projections import find_groups, fused_decoding
from engine.models import load_base
from engine.presets import builtin_dir
from engine.rollout import generate
from tests.real_formats import write_model


def _prompts(tok, n=5):
    lines = (builtin_dir() / "data" / "sort_prompts_eval.jsonl").read_text().splitlines()[:n]
    prompts = [list(tok.encode(json.loads(line)["prompt"])) for line in lines]
    prompts[0] = prompts[0][-2:]
    return prompts


def _rollout(model, prompts, eos, fused: bool, compiled: bool = True, **kw):
    before = fused_projections.ENABLED, fused_projections.EAGER
    fused_projections.ENABLED = fused_projections.EAGER = fused
    try:
        return generate(model, prompts, max_new_tokens=8, eos_ids=eos, compiled=compiled, **kw)
    finally:
        fused_projections.ENABLED, fused_projections.EAGER = before


def _same(a, b, tol):
    assert a.completion_ids == b.completion_ids
    for x, y in zip(a.logprobs, b.logprobs, strict=True):
        assert x == pytest.approx(y, abs=tol)


def _weights(model):
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}


def _check_fused_equals_unfused(model, prompts, eos, tol=1e-4, compiled=True, **kw):
    before = _weights(model)
    classes = {k: type(m) for k, m in model.named_modules()}
    spy: list[int] = []
    real = fused_projections._Group.output

    def counting(self, x, i):
        spy.append(i)
        return real(self, x, i)

    fused_projections._Group.output = counting
    try:
        mx.random.seed(3)
        fused = _rollout(model, prompts, eos, True, compiled, **kw)
    finally:
        fused_projections._Group.output = real
    mx.random.seed(3)
    plain = _rollout(model, prompts, eos, False, compiled, **kw)
    assert spy, "the rollout did not go through the fused groups"
    if not compiled:  # every decode step of every block: 3 + 2 member calls (no trace to cache them)
        blocks = len(model.model.layers)
        assert len(spy) >= 5 * blocks * (max(len(c) for c in fused.completion_ids) - 1)
    _same(fused, plain, tol)
    after = _weights(model)
    assert after.keys() == before.keys()
    for k in before:
        assert np.array_equal(before[k], after[k]), k
    assert {k: type(m) for k, m in model.named_modules()} == classes
    release_compiled(model)


def test_groups_found_per_block():
    model, _, _ = load_base(str(builtin_model_path()))
    groups = find_groups(model)
    assert len(groups) == 2 * len(model.model.layers)
    names = sorted(len(members) for _, members in groups)
    assert names == [2] * len(model.model.layers) + [3] * len(model.model.layers)


def test_fused_greedy_and_sampled_rollouts_equal_unfused():
    model, tok, _ = load_base(str(builtin_model_path()))
    prompts = _prompts(tok)
    _check_fused_equals_unfused(model, prompts, {tok.eos_token_id}, temperature=0.0)
    _check_fused_equals_unfused(model, prompts, {tok.eos_token_id}, temperature=0.9, top_p=0.95)


def test_eager_greedy_and_sampled_rollouts_equal_unfused():
    """Eager decoding (the CUDA default) binds the groups once per rollout: same tokens, same
    log-probs, and the groups hold nothing of the rollout afterwards."""
    model, tok, _ = load_base(str(builtin_model_path()))
    prompts = _prompts(tok)
    _check_fused_equals_unfused(model, prompts, {tok.eos_token_id}, compiled=False, temperature=0.0)
    _check_fused_equals_unfused(model, prompts, {tok.eos_token_id}, compiled=False, temperature=0.9, top_p=0.95)
    seen = []
    real_bind = fused_projections.FusedDecoding.bind

    def recording(self, arrays):
        seen.append(self)
        return real_bind(self, arrays)

    before, fused_projections.EAGER = fused_projections.EAGER, True
    fused_projections.FusedDecoding.bind = recording
    try:
        with fused_projections.eager_fused_decoding(model) as on:
            assert on
            assert all(g.weight is not None for fd in seen for g in fd.groups)
            model(mx.array([prompts[1]]))
            assert any(g._outs for fd in seen for g in fd.groups)
    finally:
        fused_projections.EAGER = before
        fused_projections.FusedDecoding.bind = real_bind
    assert seen
    assert all(g.weight is None and g._x is None and not g._outs for fd in seen for g in fd.groups)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear"  # classes restored


def test_eager_fusion_off_by_default_and_none_means_a_gpu_only():
    assert fused_projections.EAGER is False and fused_projections.eager_enabled() is False
    before, fused_projections.EAGER = fused_projections.EAGER, None
    try:
        assert fused_projections.eager_enabled() == (mx.default_device() == mx.gpu)
    finally:
        fused_projections.EAGER = before


@pytest.mark.parametrize("compiled", [True, False])
def test_qwen2_biases_are_fused_too(tmp_path, compiled):
    model, tok, _ = load_base(str(write_model(tmp_path / "q", "chatml", "qwen2")))
    model.set_dtype(mx.float32)
    attn = model.model.layers[0].self_attn
    assert "bias" in attn.q_proj and "bias" in attn.k_proj
    prompts = [list(tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True)) for c in ("Sort 3 1 2", "Name a colour, then say why.")]
    _check_fused_equals_unfused(model, prompts, {tok.eos_token_id}, compiled=compiled, temperature=0.0)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("lora_dtype", ["activation", "float32"])
def test_lora_model_decodes_the_same_fused_and_trains_after(lora_dtype, compiled):
    from engine import lora_precision
    from engine.models import load_policy
    from engine.presets import load_preset

    lora_precision.ENABLED = lora_dtype == "activation"
    try:
        cfg = load_preset("tiny-dpo", [f"model.path={builtin_model_path()}", "model.adapter=lora", "model.dtype=float32"])
        pol = load_policy(cfg)
    finally:
        lora_precision.ENABLED = True
    model, tok = pol.model, pol.tokenizer
    # give the adapters a visible effect (lora_b starts at zero)
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = mx.random.normal(m.lora_b.shape, key=mx.random.key(1)).astype(m.lora_b.dtype) * 0.05
    groups = find_groups(model)
    assert groups and all(g.loras is not None for g, _ in groups)
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    # float32: in bf16 the fused matmul's different rounding flips near-tied greedy picks
    _check_fused_equals_unfused(model, _prompts(tok), {tok.eos_token_id}, compiled=compiled, temperature=0.0)
    assert {k for k, _ in tree_flatten(model.trainable_parameters())} == trainable  # the base stays frozen


def test_members_called_outside_a_step_compute_as_before():
    model, tok, _ = load_base(str(builtin_model_path()))
    x = mx.random.normal((2, 3, model.args.hidden_size))
    attn = model.model.layers[0].self_attn
    want = attn.q_proj(x)
    before, fused_projections.ENABLED = fused_projections.ENABLED, True
    try:
        with fused_decoding(model) as fd:
            assert fd is not None
            got = attn.q_proj(x)  # no step has bound the group's arrays
    finally:
        fused_projections.ENABLED = before
    assert np.array_equal(np.array(want), np.array(got))


def test_off_by_default_nothing_is_fused():
    model, _, _ = load_base(str(builtin_model_path()))
    assert fused_projections.ENABLED is False
    with fused_decoding(model) as fd:
        assert fd is None
