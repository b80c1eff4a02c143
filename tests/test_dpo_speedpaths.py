"""Speed paths of DPO must not change what is computed.

* Shared prompt: each prompt runs once and both answers attend to its keys/values; the
  answers' log-probs, the DPO loss and its gradients must equal the plain path's, where
  each row is [prompt, answer] (log-softmax written out here, independently).
* Length buckets: batches of varied lengths pad to few distinct shapes.
"""

from __future__ import annotations

import random

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs

from engine.batching import bucket_length, collate, collate_shared
from engine.logprobs import shared_prompt_logprobs, supports_shared_prompt

VOCAB = 50


def tiny_llama(seed: int = 0) -> Model:
    mx.random.seed(seed)
    args = ModelArgs(
        model_type="llama",
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=VOCAB,
        tie_word_embeddings=False,
    )
    model = Model(args)
    # random weights big enough that positions and context really change the outputs
    model.update(nn.utils.tree_map(lambda a: mx.random.normal(a.shape) * 0.3, model.parameters()))
    mx.eval(model.parameters())
    return model


def random_pairs(n: int, seed: int = 1) -> list[tuple[list[int], list[int], list[int]]]:
    rnd = random.Random(seed)
    tok = lambda k: [rnd.randrange(3, VOCAB) for _ in range(k)]  # noqa: E731
    return [(tok(rnd.randint(1, 21)), tok(rnd.randint(1, 19)), tok(rnd.randint(1, 19))) for _ in range(n)]


def plain_sequence_logps(model: Model, prompt: list[int], answer: list[int]) -> float:
    """Sum over answer tokens of log softmax(model([prompt, answer]))[next token], one row, no padding."""
    seq = prompt + answer
    logits = model(mx.array([seq[:-1]]))[0].astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    total = 0.0
    for j in range(len(answer)):
        pos = len(prompt) - 1 + j  # the position whose output predicts answer[j]
        total += float(logp[pos, answer[j]].item())
    return total


def shared_sequence_logps(model: Model, pairs) -> mx.array:
    batch = collate_shared([p for p, _, _ in pairs], [c for _, c, _ in pairs] + [r for _, _, r in pairs])
    lp, _ = shared_prompt_logprobs(model, batch.prompts, batch.prompt_pad, batch.answers)
    return (lp * batch.mask).sum(axis=-1)


def test_tiny_llama_takes_the_shared_path():
    assert supports_shared_prompt(tiny_llama())


def test_shared_prompt_gives_the_same_answer_logprobs_as_separate_rows():
    model = tiny_llama()
    pairs = random_pairs(6)
    shared = shared_sequence_logps(model, pairs).tolist()
    expected = [plain_sequence_logps(model, p, c) for p, c, _ in pairs] + [plain_sequence_logps(model, p, r) for p, _, r in pairs]
    assert shared == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_shared_prompt_gives_the_same_dpo_loss_and_gradients_as_the_plain_batch():
    model = tiny_llama(3)
    pairs = random_pairs(4, seed=7)
    beta = 0.1
    ref = mx.array([[-30.0, -28.0]] * len(pairs))

    def dpo(lc, lr):  # -log sigmoid(beta * ((lc - ref_c) - (lr - ref_r))), mean over pairs
        z = beta * ((lc - ref[:, 0]) - (lr - ref[:, 1]))
        return mx.mean(mx.logaddexp(0.0, -z))

    def plain_loss(m):
        batch = collate([(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs])
        logits = m(batch.tokens[:, :-1]).astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = mx.take_along_axis(logp, batch.tokens[:, 1:, None], axis=-1)[..., 0]
        seq = (picked * batch.mask).sum(axis=-1)
        return dpo(seq[: len(pairs)], seq[len(pairs) :])

    def shared_loss(m):
        seq = shared_sequence_logps(m, pairs)
        return dpo(seq[: len(pairs)], seq[len(pairs) :])

    lp, gp = nn.value_and_grad(model, plain_loss)(model)
    ls, gs = nn.value_and_grad(model, shared_loss)(model)
    assert float(ls.item()) == pytest.approx(float(lp.item()), rel=1e-5)
    flat_p, flat_s = dict(tree_flatten(gp)), dict(tree_flatten(gs))
    assert flat_p.keys() == flat_s.keys()
    for k in flat_p:
        diff = float(mx.abs(flat_p[k] - flat_s[k]).max().item())
        scale = float(mx.abs(flat_p[k]).max().item())
        assert diff <= 1e-3 * scale + 1e-6, k
    assert any(float(mx.abs(g).max().item()) > 0 for g in flat_s.values())


def test_length_buckets_give_few_shapes(monkeypatch):
    from engine import batching

    monkeypatch.setattr(batching, "attention_tile", lambda: 1)  # as off CUDA (the tile has its own test)
    rnd = random.Random(0)
    lengths = [rnd.randint(1, 200) for _ in range(500)]
    widths = {bucket_length(n) for n in lengths}
    assert all(w % 16 == 0 and w >= n for w, n in ((bucket_length(n), n) for n in lengths))
    assert len(widths) <= 200 // 16 + 1
    shapes = set()
    for _ in range(8):
        rows = [([5] * rnd.randint(1, 120), [6] * rnd.randint(1, 80)) for _ in range(8)]
        shapes.add(collate(rows).tokens.shape)
        sb = collate_shared([p for p, _ in rows], [c for _, c in rows] * 2)
        assert sb.prompts.shape[1] % 16 == 0 and sb.answers.shape[1] % 16 == 0
    assert all(s[1] % 16 == 0 for s in shapes)


def test_on_cuda_bucketed_lengths_make_the_model_input_a_multiple_of_the_attention_tile(monkeypatch):
    # cuDNN's fused attention backward needs query lengths that are multiples of 128: the
    # answer pass runs C - 1 tokens and a plain row's input is L - 1 tokens
    from engine import batching

    monkeypatch.setattr(batching, "attention_tile", lambda: 128)
    shared = batching.collate_shared([[5] * 500], [[6] * 250, [7] * 256])
    assert shared.prompts.shape[1] == 512 and shared.answers.shape[1] - 1 == 256
    assert shared.mask.sum().item() == 506  # padding stays masked
    rows = batching.collate([([5] * 600, [6] * 400)])
    assert rows.tokens.shape[1] - 1 == 1024 and rows.mask.shape[1] == 1024
    assert batching.bucket_length(770, shift=1) == 784  # a tile would add more than an eighth: bucket only
    assert batching.bucket_length(37, 1, shift=1) == 37  # bucket 1 (eager): exact lengths
    assert batching.collate([([5] * 100, [6] * 28)], shift=0).tokens.shape[1] == 128  # a reward model reads all 128
    monkeypatch.setattr(batching, "attention_tile", lambda: 1)
    assert batching.collate_shared([[5] * 500], [[6] * 250, [7] * 256]).answers.shape[1] == 256


@pytest.mark.parametrize("answer_len", [100, 127, 128, 250, 255, 256, 383])
@pytest.mark.parametrize("prompt_len", [500, 520, 600, 1000])
def test_on_cuda_the_answer_pass_never_has_a_tile_of_queries_over_keys_off_the_tile(monkeypatch, prompt_len, answer_len):
    # MLX's cuDNN backward corrupted memory on an H100 for 256 queries over 784 keys and 512
    # over 528: the answer pass (C - 1 queries over P + C - 1 keys) must never be that case
    from engine import batching

    monkeypatch.setattr(batching, "attention_tile", lambda: 128)
    b = batching.collate_shared([[5] * prompt_len], [[6] * answer_len, [7] * (answer_len - 3)])
    p, c = b.prompts.shape[1], b.answers.shape[1]
    queries, keys = c - 1, p + c - 1
    assert p >= prompt_len and c >= answer_len
    assert queries % 128 != 0 or keys % 128 == 0, (p, c)
    assert float(b.mask.sum().item()) == 2 * answer_len - 3  # padding stays masked
