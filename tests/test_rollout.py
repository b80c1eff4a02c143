"""Batched, KV-cached generation: same tokens as one-at-a-time, per-row EOS, cancellable."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from engine.builtin import builtin_model_path
from engine.errors import Cancelled
from engine.models import load_base
from engine.presets import builtin_dir
from engine.rollout import completion_batch, completion_logprobs, generate, generate_one_by_one


@pytest.fixture(scope="module")
def tiny():
    model, tok, _ = load_base(str(builtin_model_path()))
    lines = (builtin_dir() / "data" / "sort_prompts_eval.jsonl").read_text().splitlines()[:12]
    prompts = [list(tok.encode(json.loads(line)["prompt"])) for line in lines]
    prompts[0] = prompts[0][-3:]  # make the lengths differ a lot: left padding must not leak
    return model, tok, prompts


def test_batched_greedy_equals_one_at_a_time(tiny):
    model, tok, prompts = tiny
    batched = generate(model, prompts, max_new_tokens=12, eos_ids={tok.eos_token_id}, temperature=0.0)
    single = generate_one_by_one(model, prompts, max_new_tokens=12, eos_ids={tok.eos_token_id}, temperature=0.0)
    assert batched.completion_ids == single.completion_ids
    assert batched.finished == single.finished
    for a, b in zip(batched.logprobs, single.logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_rows_stop_at_their_own_eos_and_log_probs_match_a_forward_pass(tiny):
    model, tok, prompts = tiny
    mx.random.seed(3)
    out = generate(model, prompts, max_new_tokens=16, eos_ids={tok.eos_token_id}, temperature=0.8)
    for comp, done in zip(out.completion_ids, out.finished, strict=True):
        assert tok.eos_token_id not in comp[:-1]  # nothing generated after EOS
        assert done == (bool(comp) and comp[-1] == tok.eos_token_id)
        assert done or len(comp) == 16
    batch = completion_batch(prompts, out.completion_ids)
    lp, _ = completion_logprobs(model(batch.tokens[:, :-1]), batch, 0.8)
    for i, row in enumerate(out.logprobs):
        assert lp[i, : len(row)].tolist() == pytest.approx(row, abs=1e-4)
        assert lp[i, len(row) :].tolist() == pytest.approx([0.0] * (lp.shape[1] - len(row)))


def test_generation_checks_for_cancel_at_every_token(tiny):
    model, tok, prompts = tiny
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        generate(model, prompts, max_new_tokens=16, eos_ids={tok.eos_token_id}, temperature=1.0, check=check)
    assert len(calls) == 3
