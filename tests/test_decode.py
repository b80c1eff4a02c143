"""The compiled decode step (engine.decode): the same rollouts as the growing cache, traced once.

The static cache attends over a fixed-length buffer under a mask, so its tokens must equal
those of mlx-lm's growing batch cache (itself checked against one prompt at a time in
test_rollout.py) for left-padded prompts of very different lengths, on the architectures we
ship and the real-format ones (Qwen2/ChatML, Llama 3), after the weights change, and with
rows that stop at EOS at different tokens.
"""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from mlx.utils import tree_map

from engine.builtin import builtin_model_path
from engine.compile import _COMPILED, release_compiled
from engine.decode import ROUND, StaticCache, cache_length
from engine.models import load_base
from engine.presets import builtin_dir
from engine.rollout import generate
from tests.real_formats import write_model


@pytest.fixture(scope="module")
def tiny():
    model, tok, _ = load_base(str(builtin_model_path()))
    lines = (builtin_dir() / "data" / "sort_prompts_eval.jsonl").read_text().splitlines()[:6]
    prompts = [list(tok.encode(json.loads(line)["prompt"])) for line in lines]
    prompts[0] = prompts[0][-2:]  # very different lengths: the left padding must stay hidden
    return model, tok, prompts


def _same(a, b, logp_tol=1e-4):
    assert a.completion_ids == b.completion_ids
    assert a.finished == b.finished
    for x, y in zip(a.logprobs, b.logprobs, strict=True):
        assert x == pytest.approx(y, abs=logp_tol)


def test_static_cache_mask_hides_padding_and_the_unwritten_tail():
    c = StaticCache(mx.zeros((2, 1, 8, 4)), mx.zeros((2, 1, 8, 4)), mx.array([0, 3]), mx.array(5))
    mask = c.make_mask(1)
    assert mask.shape == (2, 1, 1, 8)
    assert mask[0, 0, 0].tolist() == [True] * 6 + [False] * 2  # row 0: positions 0..5 (5 = itself)
    assert mask[1, 0, 0].tolist() == [False] * 3 + [True] * 3 + [False] * 2  # row 1: padding 0..2 hidden
    assert c.offset.tolist() == [5, 2]  # RoPE positions do not count the padding
    # a sliding window of 3 keeps the query and the two keys before it, as mlx-lm's mask does
    from mlx_lm.models.base import create_causal_mask

    assert c.make_mask(1, window_size=3)[0, 0, 0].tolist() == [False] * 3 + [True] * 3 + [False] * 2
    assert create_causal_mask(1, offset=5, window_size=3)[0].tolist() == [False] * 3 + [True] * 3
    k = mx.ones((2, 1, 1, 4))
    keys, _ = c.update_and_fetch(k, k)
    assert keys[:, 0, :, 0].tolist() == [[0, 0, 0, 0, 0, 1, 0, 0]] * 2  # written at idx


def test_cache_length_rounds_up_so_similar_batches_share_a_trace():
    assert cache_length(100, 28) == 128 and cache_length(101, 28) == 192
    assert cache_length(37, 5) % ROUND == 0


def test_greedy_compiled_equals_growing_cache_across_eos_and_weight_updates(tiny):
    model, tok, prompts = tiny
    eager = generate(model, prompts, max_new_tokens=10, eos_ids={tok.eos_token_id}, temperature=0.0)
    # an EOS that some rows hit early and others not: take a token row 1 produces at its 3rd step
    stop = {eager.completion_ids[1][2]}
    eager = generate(model, prompts, max_new_tokens=10, eos_ids=stop, temperature=0.0)
    comp = generate(model, prompts, max_new_tokens=10, eos_ids=stop, temperature=0.0, compiled=True)
    assert len(eager.completion_ids[1]) == 3 and eager.finished[1]
    assert any(len(c) == 10 for c in eager.completion_ids)  # and some rows ran to the limit
    _same(eager, comp)
    # a trained adapter / updated weights are seen by the same traced step (weights are inputs)
    before = model.parameters()
    model.update(tree_map(lambda w: w * 1.5 if w.ndim == 2 else w, before))
    try:
        eager2 = generate(model, prompts, max_new_tokens=10, eos_ids=stop, temperature=0.0)
        comp2 = generate(model, prompts, max_new_tokens=10, eos_ids=stop, temperature=0.0, compiled=True)
        assert eager2.completion_ids != eager.completion_ids  # the change matters
        _same(eager2, comp2)
    finally:
        model.update(before)
    assert release_compiled(model) >= 1 and not [k for k in _COMPILED if k[0] == id(model)]


def test_the_cache_grows_by_segments_and_decodes_the_same(tiny, monkeypatch):
    from engine import decode

    model, tok, prompts = tiny
    monkeypatch.setattr(decode, "ROUND", 2)
    monkeypatch.setattr(decode, "SEGMENT", 2)  # 10 new tokens: the buffers grow three times or more
    grown = []
    real_grow = decode.grow
    monkeypatch.setattr(decode, "grow", lambda arrays, extra: grown.append(extra) or real_grow(arrays, extra))
    eager = generate(model, prompts, max_new_tokens=10, eos_ids={-1}, temperature=0.0)
    comp = generate(model, prompts, max_new_tokens=10, eos_ids={-1}, temperature=0.0, compiled=True)
    assert len(grown) >= 6 and set(grown) == {2}  # keys and values grew three times or more
    _same(eager, comp)
    release_compiled(model)


def test_sampled_compiled_rollout_draws_the_same_tokens_for_the_same_seed(tiny):
    model, tok, prompts = tiny
    mx.random.seed(11)
    eager = generate(model, prompts, max_new_tokens=8, eos_ids={tok.eos_token_id}, temperature=0.9, top_p=0.95)
    mx.random.seed(11)
    comp = generate(model, prompts, max_new_tokens=8, eos_ids={tok.eos_token_id}, temperature=0.9, top_p=0.95, compiled=True)
    _same(eager, comp)
    mx.random.seed(12)
    other = generate(model, prompts, max_new_tokens=8, eos_ids={tok.eos_token_id}, temperature=0.9, top_p=0.95, compiled=True)
    assert other.completion_ids != comp.completion_ids  # the random state is an input, not a constant
    release_compiled(model)


@pytest.mark.parametrize("fmt,arch", [("chatml", "qwen2"), ("llama3", "llama")])
def test_real_architectures_decode_the_same_with_the_static_cache(tmp_path, fmt, arch):
    model, tok, _ = load_base(str(write_model(tmp_path / arch, fmt, arch)))
    model.set_dtype(mx.float32)
    msgs = [[{"role": "user", "content": "Sort 3 1 2"}], [{"role": "user", "content": "Name a colour, then explain in detail why you chose it."}]]
    prompts = [list(tok.apply_chat_template(m, add_generation_prompt=True)) for m in msgs]
    assert len(prompts[0]) != len(prompts[1])
    eos = {tok.eos_token_id}
    eager = generate(model, prompts, max_new_tokens=6, eos_ids=eos, temperature=0.0)
    comp = generate(model, prompts, max_new_tokens=6, eos_ids=eos, temperature=0.0, compiled=True)
    _same(eager, comp)
    release_compiled(model)


def test_a_4bit_lora_model_in_bf16_decodes_the_same_compiled():
    # QLoRA as a Mac user trains GRPO: quantized base, bf16 activations, LoRA in bf16
    from engine.models import load_policy
    from engine.presets import load_preset

    cfg = load_preset("tiny-dpo", [f"model.path={builtin_model_path()}", "model.adapter=lora", "model.dtype=bfloat16", "model.quantize=4bit"])
    pol = load_policy(cfg)
    model, tok = pol.model, pol.tokenizer
    assert type(model.model.layers[0].self_attn.q_proj.linear).__name__ == "QuantizedLinear"
    lines = (builtin_dir() / "data" / "sort_prompts_eval.jsonl").read_text().splitlines()[:4]
    prompts = [list(tok.encode(json.loads(line)["prompt"])) for line in lines]
    prompts[0] = prompts[0][-2:]
    eager = generate(model, prompts, max_new_tokens=8, eos_ids={tok.eos_token_id}, temperature=0.0)
    comp = generate(model, prompts, max_new_tokens=8, eos_ids={tok.eos_token_id}, temperature=0.0, compiled=True)
    _same(eager, comp)
    release_compiled(model)
