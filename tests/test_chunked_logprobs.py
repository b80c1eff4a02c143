"""The chunked output layer (engine.logprobs.head_logprobs) computes what the written-out one does.

Chunking runs the output layer on a few positions at a time under ``mx.checkpoint`` and keeps
only each target's log-prob and the mean logit. The same float32 operations happen on the
same numbers, only grouped differently (the matrix product over a chunk instead of the whole
batch), so the results may differ by matmul rounding alone. The tolerance is derived from
that: a dot product of length D rounds to within D * eps * sum|h_i w_i| (the standard bound),
log-softmax is 1-Lipschitz in the max-norm per logit and the picked logit adds one more, so
|delta log p| <= 2 * D * eps * max_v sum_i |h_i| |w_vi| (computed below from the arrays).
Gradients are sums of such terms over positions; they are compared relative to their norm
with 4 * D * eps (the forward bound, once for each of the two backward products).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs

from engine.batching import collate_shared
from engine.logprobs import (
    _head_module,
    head_logprobs,
    shared_prompt_logprobs,
    shared_prompt_stats,
    shifted_token_logprobs,
    shifted_token_stats,
)

VOCAB, HIDDEN = 97, 32
EPS = float(np.finfo(np.float32).eps)


def tiny_llama(tied: bool, seed: int = 0) -> Model:
    mx.random.seed(seed)
    args = ModelArgs(
        model_type="llama", hidden_size=HIDDEN, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=VOCAB, tie_word_embeddings=tied,
    )
    model = Model(args)
    model.update(nn.utils.tree_map(lambda a: mx.random.normal(a.shape) * 0.3, model.parameters()))
    mx.eval(model.parameters())
    return model


def logit_bound(model: Model, hidden: mx.array) -> float:
    """2 * D * eps * max over positions and vocab of sum_i |h_i| |w_vi|: the rounding bound above."""
    module, _ = _head_module(model)
    w = np.abs(np.array(module.weight, dtype=np.float32))  # [V, D]
    h = np.abs(np.array(hidden, dtype=np.float32)).reshape(-1, w.shape[1])
    return 2 * HIDDEN * EPS * float((h @ w.T).max())


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_logprobs_equal_the_written_out_log_softmax(tied: bool, chunk: int) -> None:
    model = tiny_llama(tied)
    tokens = mx.random.randint(3, VOCAB, (3, 19))
    full_lp, logits = shifted_token_logprobs(model, tokens)
    lp, mean = shifted_token_stats(model, tokens, chunk=chunk)
    # written out independently: log-softmax with NumPy in float64 from the model's logits
    lg = np.array(logits, dtype=np.float64)
    want = np.take_along_axis(lg, np.array(tokens[:, 1:])[..., None], -1)[..., 0] - np.log(np.exp(lg).sum(-1))
    tol = logit_bound(model, model.model(tokens[:, :-1]))
    assert np.abs(np.array(lp) - want).max() <= tol + 4 * EPS * np.abs(want).max()
    assert np.abs(np.array(lp) - np.array(full_lp)).max() <= tol
    assert np.abs(np.array(mean) - lg.mean(-1)).max() <= tol
    assert mean.shape == lp.shape == (3, 18)


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_shared_prompt_path_gives_the_same_logprobs_and_gradients(tied: bool) -> None:
    model = tiny_llama(tied)
    rnd = np.random.default_rng(3)
    pairs = [
        (list(rnd.integers(3, VOCAB, rnd.integers(2, 12))), list(rnd.integers(3, VOCAB, rnd.integers(1, 9))), list(rnd.integers(3, VOCAB, rnd.integers(1, 9))))
        for _ in range(4)
    ]
    batch = collate_shared([[int(t) for t in p] for p, _, _ in pairs], [[int(t) for t in c] for _, c, _ in pairs] + [[int(t) for t in r] for _, _, r in pairs])
    args = (batch.prompts, batch.prompt_pad, batch.answers)
    want_lp, logits = shared_prompt_logprobs(model, *args)
    lp, mean = shared_prompt_stats(model, *args, chunk=5)
    tol = logit_bound(model, mx.concatenate([mx.zeros((logits.shape[0], 1, HIDDEN)), model.model(batch.answers)], axis=1)) * 4
    m = np.array(batch.mask) > 0
    assert np.abs(np.array(lp)[m] - np.array(want_lp)[m]).max() <= tol
    assert np.abs(np.array(mean)[m] - np.array(logits.mean(axis=-1))[m]).max() <= tol

    def loss(chunk: int):
        def f(mdl: Model) -> mx.array:
            if chunk < 0:
                out, _ = shared_prompt_logprobs(mdl, *args)
            else:
                out, _ = shared_prompt_stats(mdl, *args, chunk=chunk)
            s = (out * batch.mask).sum(axis=-1)
            n = s.shape[0] // 2
            return -nn.log_sigmoid(0.1 * (s[:n] - s[n:])).mean()  # a DPO-shaped loss

        return nn.value_and_grad(model, f)(model)

    (l_full, g_full), (l_chunk, g_chunk) = loss(-1), loss(3)
    assert abs(float(l_full) - float(l_chunk)) <= tol
    flat_full, flat_chunk = dict(tree_flatten(g_full)), dict(tree_flatten(g_chunk))
    assert flat_full.keys() == flat_chunk.keys()
    a = np.concatenate([np.array(flat_full[k]).ravel() for k in flat_full])
    b = np.concatenate([np.array(flat_chunk[k]).ravel() for k in flat_full])
    assert np.linalg.norm(a - b) <= 4 * HIDDEN * EPS * np.linalg.norm(a)
    # the output layer's own weight gets its gradient through the checkpoint too
    head_key = "model.embed_tokens.weight" if tied else "lm_head.weight"
    assert np.abs(np.array(flat_chunk[head_key])).max() > 0


def test_chunk_zero_writes_out_the_logits_and_agrees() -> None:
    model = tiny_llama(True)
    hidden = mx.random.normal((2, 5, HIDDEN))
    targets = mx.random.randint(0, VOCAB, (2, 5))
    a, _ = head_logprobs(model, hidden, targets, chunk=0)
    b, _ = head_logprobs(model, hidden, targets, chunk=3)
    assert np.abs(np.array(a) - np.array(b)).max() <= logit_bound(model, hidden)


@pytest.mark.parametrize("tied", [True, False])
def test_completion_stats_equal_the_written_out_completion_logprobs_and_entropy(tied: bool) -> None:
    """GRPO/RLOO score rollouts through the chunked output layer on completion positions only;
    log-probs, entropy (a metric) and a policy-gradient loss's gradients match the logits path."""
    from engine.rollout import completion_batch, completion_logprobs, completion_stats

    model = tiny_llama(tied, seed=5)
    rnd = np.random.default_rng(7)
    prompts = [[int(t) for t in rnd.integers(3, VOCAB, rnd.integers(2, 9))] for _ in range(5)]
    completions = [[int(t) for t in rnd.integers(3, VOCAB, rnd.integers(1, 8))] for _ in range(5)]
    batch = completion_batch(prompts, completions)
    temperature = 0.7
    want_lp, want_ent = completion_logprobs(model(batch.tokens[:, :-1]), batch, temperature)
    lp, ent = completion_stats(model, batch, temperature)
    hidden = model.model(batch.tokens[:, :-1]) / temperature  # the tempered logits' rounding bound
    tol = logit_bound(model, hidden) * 2
    m = np.array(batch.mask) > 0
    assert np.abs(np.array(lp)[m] - np.array(want_lp)[m]).max() <= tol
    # entropy: sum over the vocabulary of p * log p, each log p within tol: |delta H| <= tol * (1 + max |log p|)
    lg = np.array(want_lp)  # (only for the scale of log p)
    assert np.abs(np.array(ent)[m] - np.array(want_ent)[m]).max() <= tol * (1 + np.log(VOCAB) + np.abs(lg).max())
    assert np.all(np.array(ent)[~m] == 0) and np.all(np.array(lp)[~m] == 0)
    # written out independently: entropy of the tempered softmax with NumPy in float64
    logits = np.array(model(batch.tokens[:, :-1]), dtype=np.float64) / temperature
    picked = np.take_along_axis(logits, np.array(batch.index)[..., None], axis=1)
    logp = picked - np.log(np.exp(picked).sum(-1, keepdims=True))
    numpy_ent = -(np.exp(logp) * logp).sum(-1)
    assert np.abs(np.array(ent)[m] - numpy_ent[m]).max() <= tol * (1 + np.log(VOCAB) + np.abs(logp).max()) + 8 * EPS * np.log(VOCAB)

    adv = mx.array(rnd.normal(size=(5, 1)).astype(np.float32))

    def loss(chunked: bool):
        def f(mdl: Model) -> mx.array:
            out = completion_stats(mdl, batch, temperature)[0] if chunked else completion_logprobs(mdl(batch.tokens[:, :-1]), batch, temperature)[0]
            return -(out * adv).sum() / batch.mask.sum()

        return nn.value_and_grad(model, f)(model)

    (l_full, g_full), (l_chunk, g_chunk) = loss(False), loss(True)
    assert abs(float(l_full) - float(l_chunk)) <= tol
    a = np.concatenate([np.array(v).ravel() for _, v in tree_flatten(g_full)])
    b = np.concatenate([np.array(v).ravel() for _, v in tree_flatten(g_chunk)])
    assert np.linalg.norm(a - b) <= 4 * HIDDEN * EPS * np.linalg.norm(a) / temperature


@pytest.mark.parametrize("vocab", [97, 8192, 32768, 128256, 151936, 262144])
def test_a_chunk_is_sized_by_its_logits(vocab: int) -> None:
    """Positions per chunk: as many whole tiles of 128 as fit CHUNK_LOGITS logits (at least one
    tile), so a 128k or 152k vocabulary gets fewer positions than a 32k one."""
    from engine import logprobs

    n = logprobs.chunk_positions(vocab)
    assert n % 128 == 0 and n >= 128
    assert n * vocab <= logprobs.CHUNK_LOGITS or n == 128
    assert (n + 128) * vocab > logprobs.CHUNK_LOGITS


def test_a_large_vocabulary_holds_a_smaller_chunk_at_the_backward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backward pass recomputes a chunk's logits while the blocks' activations are held:
    sized by the vocabulary, a chunk of 128 positions (CHUNK_LOGITS = 128 x 4,096) must peak
    lower than the fixed 1,024 positions of before by at least the extra positions' float32
    logits ((1,024 - 128) x 4,096 x 4 bytes = 14.7 MB)."""
    from engine import logprobs

    vocab, hidden_size = 4096, 64
    monkeypatch.setattr(logprobs, "CHUNK_LOGITS", 128 * vocab)
    mx.random.seed(0)
    args = ModelArgs(
        model_type="llama", hidden_size=hidden_size, num_hidden_layers=1, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=vocab, tie_word_embeddings=False,
    )
    model = Model(args)
    hidden = mx.random.normal((4, 512, hidden_size))
    targets = mx.random.randint(0, vocab, (4, 512))
    mx.eval(model.parameters(), hidden, targets)

    def peak(chunk: int | None) -> int:
        grad = mx.grad(lambda h: head_logprobs(model, h, targets, chunk)[0].sum())
        mx.clear_cache()
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        mx.eval(grad(hidden))
        return mx.get_peak_memory() - before

    assert logprobs.chunk_positions(vocab) == 128
    fixed, sized = peak(1024), peak(None)
    assert fixed - sized >= (1024 - 128) * vocab * 4, (fixed, sized)
