"""Data order (seeded, resumable, sharded across ranks) and padding into length buckets."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx

BUCKET = 16  # pad lengths up to a multiple of this so compiled steps see few shapes

# MLX's CUDA attention (cuDNN) has a fused backward pass only for query lengths that are a
# multiple of 128; other lengths differentiate the written-out attention (scores for every
# query and key). On CUDA, bucketed lengths are padded so that the model's input is such a
# multiple (benchmarks/gpu_step_levers.py sets this to 1 to compare).
CUDA_ATTENTION_TILE = 128


def on_cuda() -> bool:
    """Whether MLX computes on an NVIDIA GPU here (its CUDA backend)."""
    try:
        return mx.default_device().type == mx.DeviceType.gpu and mx.cuda.is_available()
    except AttributeError:  # an MLX without the CUDA module
        return False


def attention_tile() -> int:
    """The query-length multiple that gets fused attention gradients here (1: any length)."""
    return CUDA_ATTENTION_TILE if on_cuda() else 1


def bucket_length(n: int, bucket: int = BUCKET, shift: int = 0, on_tile: bool = True) -> int:
    """``n`` rounded up to a multiple of ``bucket`` (``bucket=1``: exactly ``n``). Where the
    attention has a tile (CUDA) and ``on_tile``, a bucketed length is padded further so that
    ``length - shift`` is a multiple of it, when that adds at most an eighth: ``shift`` is how
    much shorter than the padded rows the model's input is (1 where the last token is only a
    target)."""
    width = max(bucket, -(-n // bucket) * bucket)
    tile = attention_tile() if bucket > 1 and on_tile else 1
    if tile > 1:
        tiled = shift + -(-(width - shift) // tile) * tile
        if (tiled - width) * 8 <= width:  # padding up to 1/8 more tokens buys the fused backward
            width = tiled
    return width


GROUP_WINDOW = 64  # batches per window that data.group_by_length sorts by length


def group_by_length(order: list[int], lengths: Sequence[int], batch_size: int, rng: random.Random, head: int = 0) -> list[int]:
    """``order`` rearranged so that each batch holds examples of similar length: after the
    first ``head`` (which complete a batch begun before ``order``), each window of
    ``GROUP_WINDOW`` batches is sorted by length, longest first, and cut into batches whose
    order is shuffled; the last window's incomplete batch stays last. Every example stays
    exactly once and each stays in its window, so the run still sees the data in a random order
    at the scale of windows."""
    out = list(order[:head])
    rest = order[head:]
    span = GROUP_WINDOW * batch_size
    for start in range(0, len(rest), span):
        window = sorted(rest[start : start + span], key=lambda i: -lengths[i])  # stable: ties keep the shuffle
        full = len(window) - len(window) % batch_size
        batches = [window[b : b + batch_size] for b in range(0, full, batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            out.extend(batch)
        out.extend(window[full:])
    return out


class DataOrder:
    """Which examples each step trains on. Epoch ``e`` is a permutation seeded by ``seed + e``.

    ``state_dict`` is (epoch, cursor), so a resumed run continues with exactly the batches
    an uninterrupted run would have seen. With several ranks each takes a disjoint,
    equal share of every global batch. With ``lengths`` (and ``shuffle``), each epoch's
    permutation batches examples of similar length together (:func:`group_by_length`),
    aligned to where that epoch's first full batch begins.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1, lengths: Sequence[int] | None = None
    ) -> None:
        if n <= 0:
            raise ValueError("no examples")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} examples")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world = rank, world
        self.lengths = lengths
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        idx = list(range(self.n))
        if self.shuffle:
            rng = random.Random(self.seed * 1_000_003 + epoch)
            rng.shuffle(idx)
            if self.lengths is not None and self.batch_size > 1:
                head = -(epoch * self.n) % self.batch_size  # rows that finish the batch the last epoch began
                idx = group_by_length(idx, self.lengths, self.batch_size, rng, min(head, self.n))
        return idx

    def next_global(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.cursor >= self.n:
                self.epoch += 1
                self.cursor = 0
                self._perm = self._permutation(self.epoch)
            take = min(self.batch_size - len(out), self.n - self.cursor)
            out.extend(self._perm[self.cursor : self.cursor + take])
            self.cursor += take
        return out

    def next_indices(self) -> list[int]:
        """This rank's share of the next global batch."""
        return self.next_global()[self.rank :: self.world]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._perm = self._permutation(self.epoch)


@dataclass
class TokenBatch:
    """Rows of prompt+completion tokens, padded; ``mask`` marks completion targets."""

    tokens: mx.array  # [N, L] int32
    mask: mx.array  # [N, L-1] float32: 1 where tokens[:, 1:] is a completion token
    num_tokens: int  # real (unpadded) tokens in the batch
    completion_tokens: int


def collate(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int = 0, bucket: int = BUCKET, shift: int = 1) -> TokenBatch:
    """Pad ``(prompt_ids, completion_ids)`` rows to one bucketed length (``bucket=1``: the longest
    row). ``shift``: the model sees ``tokens[:, :-1]`` (1, a language model's targets) or all
    of ``tokens`` (0, a reward model), for ``bucket_length``'s attention tile."""
    # the first token has nothing to predict it: an empty prompt lends it from the completion
    rows = [(p, c) if len(p) else (list(c[:1]), list(c[1:])) for p, c in rows]
    lengths = [len(p) + len(c) for p, c in rows]
    width = bucket_length(max(lengths), bucket, shift=shift)
    toks, masks = [], []
    for (p, c), n in zip(rows, lengths, strict=True):
        seq = list(p) + list(c)
        toks.append(seq + [pad_id] * (width - n))
        # target j predicts tokens[j + 1]; completion tokens sit at positions len(p) .. n-1
        masks.append([0.0] * (len(p) - 1) + [1.0] * len(c) + [0.0] * (width - n))
    return TokenBatch(
        tokens=mx.array(toks, dtype=mx.int32),
        mask=mx.array(masks, dtype=mx.float32),
        num_tokens=sum(lengths),
        completion_tokens=sum(len(c) for _, c in rows),
    )


@dataclass
class SharedPromptBatch:
    """Preference pairs laid out to run each prompt once (see ``logprobs.shared_prompt_logprobs``).

    ``prompts`` [N, P] left-padded; ``answers`` [2N, C] chosen rows then rejected rows,
    right-padded; ``mask`` [2N, C] marks real answer tokens. ``P`` and ``C`` are bucketed.
    """

    prompts: mx.array
    prompt_pad: mx.array
    answers: mx.array
    mask: mx.array
    num_tokens: int  # tokens of the pairs as plain rows (prompt counted with each answer)
    completion_tokens: int


def collate_shared(
    prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int = 0, bucket: int = BUCKET
) -> SharedPromptBatch:
    """``answers`` holds ``k * len(prompts)`` rows; row ``j`` answers prompt ``j % len(prompts)``."""
    n = len(prompts)
    if n == 0 or len(answers) % n or any(len(p) == 0 for p in prompts) or any(len(a) == 0 for a in answers):
        raise ValueError("shared-prompt batches need non-empty prompts and answers, a whole number of answers per prompt")
    p_width = bucket_length(max(len(p) for p in prompts), bucket)
    # The answer pass runs C - 1 queries over P + C - 1 keys. MLX's cuDNN backward (0.32.4, seen
    # on an H100) corrupts memory when the queries are a multiple of the tile and the keys are
    # not, so the answers are put on the tile only where the prompts are, and never left on it
    # otherwise (the written-out backward then runs: slower, correct).
    tile = attention_tile()
    c_width = bucket_length(max(len(a) for a in answers), bucket, shift=1, on_tile=p_width % tile == 0)
    if tile > 1 and p_width % tile and (c_width - 1) % tile == 0:
        c_width += 1
    prompt_rows = [[pad_id] * (p_width - len(p)) + list(p) for p in prompts]
    answer_rows = [list(a) + [pad_id] * (c_width - len(a)) for a in answers]
    mask = [[1.0] * len(a) + [0.0] * (c_width - len(a)) for a in answers]
    return SharedPromptBatch(
        prompts=mx.array(prompt_rows, dtype=mx.int32),
        prompt_pad=mx.array([p_width - len(p) for p in prompts], dtype=mx.int32),
        answers=mx.array(answer_rows, dtype=mx.int32),
        mask=mx.array(mask, dtype=mx.float32),
        num_tokens=sum(len(prompts[j % n]) + len(a) for j, a in enumerate(answers)),
        completion_tokens=sum(len(a) for a in answers),
    )
