"""Data order (seeded, resumable, sharded across ranks) and padding into length buckets."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx

BUCKET = 16  # pad lengths up to a multiple of this so compiled steps see few shapes


def bucket_length(n: int, bucket: int = BUCKET) -> int:
    return max(bucket, -(-n // bucket) * bucket)


class DataOrder:
    """Which examples each step trains on. Epoch ``e`` is a permutation seeded by ``seed + e``.

    ``state_dict`` is (epoch, cursor), so a resumed run continues with exactly the batches
    an uninterrupted run would have seen. With several ranks each takes a disjoint,
    equal share of every global batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1) -> None:
        if n <= 0:
            raise ValueError("no examples")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        idx = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(idx)
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


def collate(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int = 0) -> TokenBatch:
    """Pad ``(prompt_ids, completion_ids)`` rows to one bucketed length."""
    # the first token has nothing to predict it: an empty prompt lends it from the completion
    rows = [(p, c) if len(p) else (list(c[:1]), list(c[1:])) for p, c in rows]
    lengths = [len(p) + len(c) for p, c in rows]
    width = bucket_length(max(lengths))
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
