"""Batched, KV-cached generation for PPO and GRPO, and the padded layout used to train on it.

``generate`` runs every prompt of a batch through the model at once: prompts are
left-padded and mlx-lm's ``BatchKVCache`` masks the padding and gives each row its own
RoPE positions, so a row's tokens are the same as when it is generated alone (see
``tests/test_rollout.py``). Each row stops at its first EOS; the loop ends when all rows
have stopped or ``max_new_tokens`` is reached. ``check`` is called before every token so
that pause and cancel take effect in the middle of generation.

``CompletionBatch`` lays prompt + completion rows out right-padded for training and keeps,
for every row, the positions whose next-token predictions are the completion tokens, so
per-token arrays (log-probs, values, rewards) come out as ``[rows, completion_length]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from engine.logprobs import (
    entropy_from_logits,
    head_logprobs,
    supports_chunked_head,
    token_logprobs,
)


@dataclass
class Rollout:
    """Generated completions (EOS kept when the row stopped), one list per prompt row."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    finished: list[bool]  # the row emitted EOS (False: cut at max_new_tokens)
    logprobs: list[list[float]]  # log-probs of the sampled tokens under the sampling distribution

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


def _batch_cache(model: nn.Module, left_padding: list[int]) -> list:
    from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

    plain = make_prompt_cache(model)
    if not all(type(c) is KVCache for c in plain):
        return []  # sliding-window / recurrent caches: generate row by row instead
    return [BatchKVCache(left_padding) for _ in plain]


def sample_tokens(logits: mx.array, temperature: float, top_p: float) -> tuple[mx.array, mx.array]:
    """Sample one token per row; return (tokens, their log-probs under the tempered distribution)."""
    logits = logits.astype(mx.float32)
    if temperature <= 0:
        tokens = mx.argmax(logits, axis=-1)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    else:
        scaled = logits / temperature
        logp = scaled - mx.logsumexp(scaled, axis=-1, keepdims=True)
        pick_from = logp
        if top_p < 1.0:
            from mlx_lm.sample_utils import apply_top_p

            pick_from = apply_top_p(logp, top_p)
        tokens = mx.random.categorical(pick_from)
    picked = mx.take_along_axis(logp, tokens[:, None], axis=-1).squeeze(-1)
    return tokens, picked


def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: set[int] | Sequence[int],
    temperature: float = 1.0,
    top_p: float = 1.0,
    pad_id: int = 0,
    check: Callable[[], None] | None = None,
    compiled: bool = False,
) -> Rollout:
    """Generate a completion for every prompt in one batch (KV cache, per-row EOS).

    With ``compiled`` the tokens after the first come from one traced decode step over a
    fixed-size cache (``engine.decode``): the same tokens, without the per-token host work
    of building the model's graph (on a GPU that work sets the token rate)."""
    prompts = [list(p) for p in prompts]
    if not prompts:
        return Rollout([], [], [], [])
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    eos = mx.array(sorted(set(eos_ids)), dtype=mx.int32)
    width = max(len(p) for p in prompts)
    left = [width - len(p) for p in prompts]
    cache = _batch_cache(model, left)
    if not cache:
        rows = [
            generate_one_by_one(model, [p], max_new_tokens=max_new_tokens, eos_ids=eos_ids, temperature=temperature, top_p=top_p, check=check)
            for p in prompts
        ]
        return Rollout(prompts, [r.completion_ids[0] for r in rows], [r.finished[0] for r in rows], [r.logprobs[0] for r in rows])
    tokens = mx.array([[pad_id] * n + p for n, p in zip(left, prompts, strict=True)], dtype=mx.int32)
    logits = model(tokens, cache=cache)[:, -1, :]
    if compiled:
        return _generate_static(model, prompts, cache, logits, width, max_new_tokens, eos, temperature, top_p, pad_id, check)
    from engine.fused_projections import eager_fused_decoding

    with eager_fused_decoding(model):  # after the prefill: its wide outputs are not held by the groups
        return _eager_loop(model, prompts, cache, logits, max_new_tokens, eos, temperature, top_p, pad_id, check)


def _eager_loop(
    model: nn.Module, prompts: list[list[int]], cache: list, logits: mx.array, max_new_tokens: int,
    eos: mx.array, temperature: float, top_p: float, pad_id: int, check: Callable[[], None] | None,
) -> Rollout:
    done = mx.zeros((len(prompts),), dtype=mx.bool_)
    out_tokens: list[mx.array] = []
    out_logps: list[mx.array] = []
    out_live: list[mx.array] = []
    for i in range(max_new_tokens):
        if check is not None:
            check()
        tok, logp = sample_tokens(logits, temperature, top_p)
        live = mx.logical_not(done)
        tok = mx.where(live, tok, pad_id).astype(mx.int32)
        out_tokens.append(tok)
        out_logps.append(logp)
        out_live.append(live)
        done = mx.logical_or(done, (tok[:, None] == eos[None, :]).any(axis=-1))
        if i + 1 == max_new_tokens:
            break  # the last token's successor is never sampled: no forward pass for it
        logits = model(tok[:, None], cache=cache)[:, -1, :]
        mx.async_eval(logits, logp, done)  # logp: else its whole log-softmax stays alive
        # Reading ``done`` waits for this token. Reading the previous token's flag instead (so
        # the host builds the next graph while the device works) was measured 1.10x slower on
        # an H200 (64 rows x 256 tokens, 1B): the loop is host-bound, not device-bound.
        if bool(done.all().item()):
            break
    return _collect(prompts, out_tokens, out_logps, out_live, eos)


COMPILED_DECODING: bool | None = None  # None: see compiled_decoding; benchmarks force either way
SYNC_EVERY = 8  # compiled decoding reads the all-rows-done flag once per this many tokens


def _generate_static(
    model: nn.Module, prompts: list[list[int]], cache: list, logits: mx.array, width: int, max_new_tokens: int,
    eos: mx.array, temperature: float, top_p: float, pad_id: int, check: Callable[[], None] | None,
) -> Rollout:
    """``generate``'s loop with the compiled decode step (``engine.decode``), sibling
    projections fused (``engine.fused_projections``)."""
    from engine.fused_projections import fused_decoding

    step, fusion = _decode_step(model, eos, temperature, top_p, pad_id)
    with fused_decoding(model) as fused:
        fusion[0] = fused
        try:
            return _static_loop(step, [] if fused is None else fused.arrays(), prompts, cache, logits, width, max_new_tokens, eos, temperature, top_p, check)
        finally:
            fusion[0] = None


def _static_loop(
    step: Callable[..., Any], fused: list[mx.array], prompts: list[list[int]], cache: list, logits: mx.array, width: int, max_new_tokens: int,
    eos: mx.array, temperature: float, top_p: float, check: Callable[[], None] | None,
) -> Rollout:
    from engine import decode

    if check is not None:
        check()
    tok, logp = sample_tokens(logits, temperature, top_p)
    live = mx.ones((len(prompts),), dtype=mx.bool_)
    tok = tok.astype(mx.int32)
    done = (tok[:, None] == eos[None, :]).any(axis=-1)
    out_tokens, out_logps, out_live = [tok], [logp], [live]
    full = decode.cache_length(width, max_new_tokens)
    length = min(full, decode.cache_length(width, decode.SEGMENT))
    caches = decode.static_caches(cache, length)
    cache.clear()  # the caller's list too: the prefill's buffers are not held beside their copies
    keys, values = [c.keys for c in caches], [c.values for c in caches]
    left, idx = caches[0].left_padding, caches[0].idx
    del caches
    mx.eval(done, keys, values)
    for i in range(1, max_new_tokens):
        # Reading ``done`` makes the host wait for the device; every SYNC_EVERY tokens the
        # host instead queues the next steps while the device runs (a finished row's extra
        # steps emit padding and are dropped). H200, 1B, 64 rows: 8.1 -> 5.7 ms a token.
        if (i - 1) % SYNC_EVERY == 0 and bool(done.all().item()):
            break
        if check is not None:
            check()
        if width + i - 1 >= length:  # this step writes position width + i - 1: grow the buffers
            extra = min(full, length + decode.SEGMENT) - length
            keys, values, length = decode.grow(keys, extra), decode.grow(values, extra), length + extra
        tok, logp, live, done, keys, values, idx = step(tok, done, keys, values, left, idx, fused)
        out_tokens.append(tok)
        out_logps.append(logp)
        out_live.append(live)
        # logp too: left lazy, each step would keep its [rows, vocabulary] log-softmax alive
        mx.async_eval(tok, logp, done)
    return _collect(prompts, out_tokens, out_logps, out_live, eos)


def _decode_step(model: nn.Module, eos: mx.array, temperature: float, top_p: float, pad_id: int) -> tuple[Callable[..., Any], list]:
    """The compiled decode step for these sampling settings, traced once per model (see
    ``engine.compile.release_compiled``, which forgets it when the run ends), and the slot
    through which a rollout hands it its fused projections (``engine.fused_projections``)."""
    from engine import fused_projections
    from engine.compile import _COMPILED
    from engine.decode import decode_step_fn

    key = (id(model), "decode", float(temperature), float(top_p), tuple(eos.tolist()), int(pad_id), fused_projections.ENABLED)
    found = _COMPILED.get(key)
    if found is None:
        fusion: list = [None]
        fn = decode_step_fn(model, lambda logits: sample_tokens(logits, temperature, top_p), eos, pad_id, fusion)
        found = _COMPILED[key] = (fn, fusion)  # type: ignore[assignment]
    return found  # type: ignore[return-value]


def _collect(prompts: list[list[int]], out_tokens: list[mx.array], out_logps: list[mx.array], out_live: list[mx.array], eos: mx.array) -> Rollout:
    toks = mx.stack(out_tokens, axis=1).tolist()
    logps = mx.stack(out_logps, axis=1).tolist()
    lives = mx.stack(out_live, axis=1).tolist()
    eos_set = set(int(e) for e in eos.tolist())
    completions, finished, lps = [], [], []
    for row_t, row_lp, row_live in zip(toks, logps, lives, strict=True):
        n = sum(1 for x in row_live if x)
        completions.append(row_t[:n])
        lps.append(row_lp[:n])
        finished.append(n > 0 and row_t[n - 1] in eos_set)
    return Rollout(prompts, completions, finished, lps)


def generate_one_by_one(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: set[int] | Sequence[int],
    temperature: float = 1.0,
    top_p: float = 1.0,
    check: Callable[[], None] | None = None,
) -> Rollout:
    """Sequential reference: one prompt at a time with mlx-lm's per-model cache."""
    from mlx_lm.models.cache import make_prompt_cache

    eos_set = set(eos_ids)
    comps, fins, lps = [], [], []
    for p in prompts:
        cache = make_prompt_cache(model)
        logits = model(mx.array([list(p)], dtype=mx.int32), cache=cache)[:, -1, :]
        row: list[int] = []
        row_lp: list[float] = []
        for _ in range(max_new_tokens):
            if check is not None:
                check()
            tok, logp = sample_tokens(logits, temperature, top_p)
            t = int(tok.item())
            row.append(t)
            row_lp.append(float(logp.item()))
            if t in eos_set:
                break
            logits = model(mx.array([[t]], dtype=mx.int32), cache=cache)[:, -1, :]
        comps.append(row)
        lps.append(row_lp)
        fins.append(bool(row) and row[-1] in eos_set)
    return Rollout([list(p) for p in prompts], comps, fins, lps)


# ---------------------------------------------------------------- training layout


@dataclass
class CompletionBatch:
    """Right-padded prompt+completion rows and where each completion token is predicted.

    ``tokens[:, :-1]`` is the model input; the prediction of completion token ``t`` of row
    ``i`` sits at input position ``index[i, t]``; ``mask[i, t]`` is 1 for real tokens.
    """

    tokens: mx.array  # [N, L] int32
    index: mx.array  # [N, T] int32
    mask: mx.array  # [N, T] float32
    targets: mx.array  # [N, T] int32 completion tokens (pad where masked)
    lengths: list[int]  # completion lengths

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0] and sum(self.lengths))


def completion_batch(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int = 0, *, multiple: int = 1
) -> CompletionBatch:
    """``multiple`` rounds the row length and the completion axis up, so that a compiled step
    sees few shapes (the padding is masked out)."""
    rows = [(list(p), list(c)) for p, c in zip(prompts, completions, strict=True)]
    width = max(len(p) + max(len(c), 1) for p, c in rows)
    width = max(width, 2)
    t_max = max(max(len(c) for _, c in rows), 1)
    if multiple > 1:
        from engine.batching import bucket_length

        width = bucket_length(width, multiple, shift=1)  # the model sees tokens[:, :-1]
        t_max = -(-t_max // multiple) * multiple  # only the output layer runs on this axis: no tile
    toks, idx, mask, tgt = [], [], [], []
    for p, c in rows:
        seq = p + c
        toks.append(seq + [pad_id] * (width - len(seq)))
        start = len(p) - 1
        idx.append([min(start + t, width - 2) for t in range(t_max)])
        mask.append([1.0] * len(c) + [0.0] * (t_max - len(c)))
        tgt.append(c + [pad_id] * (t_max - len(c)))
    return CompletionBatch(
        tokens=mx.array(toks, dtype=mx.int32),
        index=mx.array(idx, dtype=mx.int32),
        mask=mx.array(mask, dtype=mx.float32),
        targets=mx.array(tgt, dtype=mx.int32),
        lengths=[len(c) for _, c in rows],
    )


def gather_positions(x: mx.array, index: mx.array) -> mx.array:
    """``x[i, index[i, t]]`` for ``x`` of shape [N, L, ...] and ``index`` [N, T]."""
    extra = x.ndim - 2
    idx = index.reshape(*index.shape, *([1] * extra))
    if extra:
        idx = mx.broadcast_to(idx, (*index.shape, *x.shape[2:]))
    return mx.take_along_axis(x, idx, axis=1)


def completion_stats(model: nn.Module, batch: CompletionBatch, temperature: float = 1.0) -> tuple[mx.array, mx.array]:
    """``completion_logprobs`` of ``model`` on ``batch`` without writing out its logits.

    The blocks run on every position, but the output layer only on the completion positions,
    a chunk at a time under ``mx.checkpoint`` (``engine.logprobs.head_logprobs``): no
    [rows, positions, vocabulary] float32 array is held, and the prompt positions' logits are
    never computed. Models whose output layer cannot be run apart fall back to the logits."""
    if not supports_chunked_head(model):
        return completion_logprobs(model(batch.tokens[:, :-1]), batch, temperature)
    hidden = gather_positions(model.model(batch.tokens[:, :-1]), batch.index)
    lp, ent = head_logprobs(model, hidden, batch.targets, temperature=temperature if temperature > 0 else 1.0, second="entropy")
    return lp * batch.mask, ent * batch.mask


def completion_logprobs(logits: mx.array, batch: CompletionBatch, temperature: float = 1.0) -> tuple[mx.array, mx.array]:
    """Per-token log-probs [N, T] of the completion tokens and the entropy [N, T], float32.

    ``logits`` are the model's outputs for ``batch.tokens[:, :-1]``; they are divided by the
    sampling temperature (as TRL does) so ratios compare the distribution that sampled.
    """
    picked = gather_positions(logits, batch.index).astype(mx.float32)
    if temperature > 0 and temperature != 1.0:
        picked = picked / temperature
    lp = token_logprobs(picked, batch.targets) * batch.mask
    ent = entropy_from_logits(picked) * batch.mask
    return lp, ent


# ---------------------------------------------------------------- helpers shared by PPO and GRPO


def require_sampling(cfg: Any) -> None:
    """Sampling algorithms (PPO, GRPO, ...) refuse ``generation.temperature = 0``: greedy
    rollouts make every sample of a prompt the same, so there is nothing to compare."""
    if cfg.generation.temperature <= 0:
        from engine.errors import ConfigError

        raise ConfigError(
            f"generation.temperature = {cfg.generation.temperature:g}: {cfg.algorithm} samples its rollouts and needs a temperature above 0 "
            "(greedy samples are identical, so it would learn nothing); try 1.0"
        )


def eos_token_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "eos_token_ids", None) or [])
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ValueError("the tokenizer has no EOS token; generation could not stop")
    return ids


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding id, or 0 when it has none."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def sample_completions(ctx: Any, prompt_ids: Sequence[Sequence[int]], eos_ids: set[int], temperature: float) -> tuple[Any, list[str]]:
    """Generate one completion per prompt with the run's generation settings.

    ``ctx`` is the algorithm's TrainContext: its model, tokenizer, config, progress and
    pause/cancel hooks are used. Returns the rollout and the decoded completion texts.
    """
    gen = ctx.cfg.generation
    ctx.phase("generating", 0, len(prompt_ids))
    rollout = generate(
        ctx.model,
        list(prompt_ids),
        max_new_tokens=gen.max_new_tokens,
        eos_ids=eos_ids,
        temperature=temperature,
        top_p=gen.top_p,
        pad_id=pad_id(ctx.tokenizer),
        check=ctx.check,
        compiled=compiled_decoding(ctx.cfg.train.compile),
    )
    ctx.phase("generating", len(prompt_ids), len(prompt_ids))
    return rollout, [decode_completion(ctx.tokenizer, c, eos_ids) for c in rollout.completion_ids]


def compiled_decoding(compile_asked: bool) -> bool:
    """Whether rollouts run the compiled decode step (``engine.decode``): where
    ``train.compile`` is on and pays (a GPU), except on CUDA. There the eager loop was faster
    in every measurement (H200 2026-11-30, H100 2026-12-05 and 12-06: 6.2 against 7.6 ms a
    token for 64 rows of the 1B model, and a GRPO step of 2.10 against 2.39 s): CUDA's attention
    has no fused kernel for the static cache's array mask. ``COMPILED_DECODING`` overrides."""
    if COMPILED_DECODING is not None:
        return COMPILED_DECODING
    from engine.batching import on_cuda
    from engine.compile import compile_pays

    return compile_pays(compile_asked) and not on_cuda()


def decode_completion(tokenizer: Any, ids: Sequence[int], eos: set[int]) -> str:
    """The completion's text without its EOS token(s)."""
    return tokenizer.decode([t for t in ids if t not in eos])


class ReferencePolicy:
    """The policy as the run started, for reference log-probs, without a second model.

    It keeps the *initial* trainable arrays (LoRA/DoRA adapters: small; full fine-tuning:
    one extra copy of the weights) and swaps them in for the duration of ``active()``.
    With LoRA the initial adapters add nothing (``lora_b`` starts at zero), so this is the
    base model. ``setup`` runs before a resumed run loads its checkpoint, so the arrays
    captured there are the initial ones on resume too.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = tree_flatten(model.trainable_parameters())

    @contextmanager
    def active(self) -> Iterator[nn.Module]:
        current = self.model.trainable_parameters()
        self.model.update(tree_unflatten(list(self.params)))
        try:
            yield self.model
        finally:
            self.model.update(current)
