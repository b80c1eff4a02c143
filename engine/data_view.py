"""What a run trains on, as a person or a script reads it (``rlhf-tui data``, the inspector).

``view_records`` renders records exactly as the model sees them: the token ids decoded with
special tokens kept, split into spans (``prompt`` / ``answer`` / ``special``) for colouring.
``summarise`` gives the record count, token-length percentiles, truncation, the detected
shape and whether a chat template was applied.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.chat_format import Encoder
from engine.data import RunData, record_kind, render
from engine.data_shapes import SHAPE_HELP, Record

SUMMARY_SAMPLE = 2000  # token statistics over at most this many records (seeded sample)
ANSWER_KEYS = {"preference": ("chosen", "rejected"), "sft": ("completion",), "prompt": ()}


@dataclass
class Span:
    kind: str  # "prompt" | "answer" | "special"
    text: str


@dataclass
class RecordView:
    where: str
    shape: str
    templated: bool
    truncated: bool
    texts: dict[str, str]  # key -> decoded text, special tokens kept
    tokens: dict[str, int]  # key_tokens -> count
    spans: dict[str, list[Span]] = field(default_factory=dict)
    label: bool | None = None  # KTO's unpaired rows

    def as_json(self) -> dict[str, Any]:
        out = {**self.texts, **{f"{k}_tokens": v for k, v in self.tokens.items()}, "where": self.where, "shape": self.shape, "templated": self.templated, "truncated": self.truncated}
        if self.label is not None:
            out["label"] = self.label
        return out


def special_ids(tokenizer: Any) -> frozenset[int]:
    ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(i for i, t in added.items() if getattr(t, "special", True))
    return frozenset(ids)


def spans_of(tokenizer: Any, ids: Sequence[int], kind: str, specials: frozenset[int]) -> list[Span]:
    """Runs of ordinary tokens (``kind``) and special tokens, decoded with specials kept."""
    out: list[Span] = []
    run: list[int] = []
    run_special = False
    for token in [*ids, None]:
        is_special = token in specials if token is not None else not run_special
        if token is None or (run and is_special != run_special):
            if run:
                out.append(Span("special" if run_special else kind, tokenizer.decode(run, skip_special_tokens=False)))
            run = []
        if token is not None:
            run.append(token)
            run_special = is_special
    return out


def view_record(enc: Encoder, rec: Record, kind: str, specials: frozenset[int]) -> RecordView:
    kind = record_kind(rec, kind)
    r = render(enc, rec, kind)
    tok = enc.tok
    ids = {"prompt": r.prompt_ids, **dict(zip(ANSWER_KEYS[kind], r.answer_ids, strict=True))}
    texts = {k: tok.decode(list(v), skip_special_tokens=False) for k, v in ids.items()}
    spans = {k: spans_of(tok, v, "prompt" if k == "prompt" else "answer", specials) for k, v in ids.items()}
    return RecordView(rec.where, rec.shape, r.templated, r.truncated, texts, {k: len(v) for k, v in ids.items()}, spans, rec.extra.get("label") if rec.rejected is None and rec.chosen is not None else None)


def view_records(data: RunData, role: str, kind: str, n: int) -> list[RecordView]:
    records = data.records(role, kind)
    specials = special_ids(data.encoder.tok)
    chosen = records if n <= 0 else records[:n]
    return [view_record(data.encoder, r, kind, specials) for r in chosen]


def percentiles(values: list[int], qs: Sequence[int] = (50, 90, 99, 100)) -> dict[str, int]:
    if not values:
        return {}
    s = sorted(values)
    return {f"p{q}": s[min(len(s) - 1, max(0, -(-q * len(s) // 100) - 1))] for q in qs}


def summarise(data: RunData, role: str, kind: str) -> dict[str, Any]:
    records = data.records(role, kind)
    sample = records
    if len(records) > SUMMARY_SAMPLE:
        sample = random.Random(0).sample(list(records), SUMMARY_SAMPLE)
    enc = data.encoder
    lengths: dict[str, list[int]] = {}
    truncated = 0
    templated = False
    for rec in sample:
        r = render(enc, rec, kind)
        keys = ANSWER_KEYS[record_kind(rec, kind)]
        templated = templated or r.templated
        truncated += r.truncated
        lengths.setdefault("prompt", []).append(len(r.prompt_ids))
        for key, ids in zip(keys, r.answer_ids, strict=True):
            lengths.setdefault(key, []).append(len(ids))
        if len(keys) == 2:
            lengths.setdefault("pair", []).append(len(r.prompt_ids) + max(len(a) for a in r.answer_ids))
    source = data.sources.get(role)
    shape = records[0].shape if records else ""
    return {
        "split": role,
        "source": source.spec if source else "",
        "source_kind": source.kind if source else "",
        "split_name": source.split if source else "",
        "records": len(records),
        "sampled": len(sample),
        "shape": shape,
        "shape_help": SHAPE_HELP.get(shape, ""),
        "chat_template": templated,
        "chat_template_mode": data.cfg.data.chat_template,
        "max_length": data.cfg.model.max_length,
        "truncated": truncated,
        "tokens": {k: percentiles(v) for k, v in lengths.items()},
    }
