"""Training data: rows from files, folders or the Hub, parsed into shapes, tokenised lazily.

* Where rows come from: :mod:`engine.data_sources` (JSONL/JSON/parquet files, Hugging Face
  dataset folders, Hub dataset ids, split names with ``datasets``' slice syntax).
* What a row means: :mod:`engine.data_shapes` (TRL's preference / SFT / prompt-only shapes).
* What the model sees: :mod:`engine.chat_format` (chat templates, end of turn exactly once).

Rows are parsed and checked up front (cheap, and before any model download: see
:func:`check_run_data`); they are tokenised when a batch first needs them
(:class:`LazyEncoded`), so the first step comes as soon on 60,000 pairs as on 60.
Every problem is reported with the file and line (or dataset and row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from engine.chat_format import Encoder, Rendered
from engine.data_shapes import Messages, Record, parse_columns, parse_record
from engine.data_sources import (
    available_splits,
    describe_source,
    is_hub_id,
    read_json_rows,
    read_split,
)
from engine.errors import DataError

if TYPE_CHECKING:
    from engine.config import RunConfig

__all__ = [
    "Completion",
    "Encoder",
    "LazyEncoded",
    "Messages",
    "PreferencePair",
    "Prompt",
    "Record",
    "RunData",
    "check_run_data",
    "data_kind",
    "load_completions",
    "load_pairs",
    "load_prompts",
    "load_records",
    "read_rows",
    "resolve_data_file",
]


@dataclass(frozen=True)
class PreferencePair:
    """A tokenised preference pair: the prompt once, then each answer (end of turn included)."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    prompt: str
    chosen: str
    rejected: str
    where: str
    truncated: bool = False

    @property
    def num_tokens(self) -> int:
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


@dataclass(frozen=True)
class Completion:
    """A tokenised prompt + completion for SFT."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    where: str
    prompt: str = ""
    completion: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class Prompt:
    """A tokenised prompt for on-policy generation (PPO, GRPO)."""

    prompt_ids: tuple[int, ...]
    text: str
    where: str
    extra: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False


# ---------------------------------------------------------------- kinds and encoding

KIND_OF_SHAPE = {"completions": "sft", "pairs": "preference", "prompts": "prompt", "unpaired": "unpaired"}


def record_kind(rec: Record, kind: str) -> str:
    """An unpaired dataset holds labelled completions (read as SFT rows) or preference pairs."""
    if kind != "unpaired":
        return kind
    return "preference" if rec.rejected is not None else "sft"


def data_kind(algorithm: str) -> str | None:
    """The row kind an algorithm reads, from the registry's data shape (None: its own reader)."""
    from engine.algorithms.registry import spec

    try:
        shape = spec(algorithm).data
    except KeyError:
        return "preference"
    return KIND_OF_SHAPE.get(shape)


def encode(enc: Encoder, rec: Record, kind: str) -> PreferencePair | Completion | Prompt:
    kind = record_kind(rec, kind)
    if kind == "preference":
        r = enc.render(rec, (rec.chosen, rec.rejected))  # type: ignore[arg-type]
        return PreferencePair(r.prompt_ids, r.answer_ids[0], r.answer_ids[1], r.prompt, r.answers[0], r.answers[1], rec.where, r.truncated)
    if kind == "sft":
        r = enc.render(rec, (rec.chosen,))  # type: ignore[arg-type]
        return Completion(r.prompt_ids, r.answer_ids[0], rec.where, r.prompt, r.answers[0], r.truncated)
    if kind == "prompt":
        r = enc.render(rec, ())
        return Prompt(r.prompt_ids, r.prompt, rec.where, rec.extra, r.truncated)
    raise ValueError(kind)


def render(enc: Encoder, rec: Record, kind: str) -> Rendered:
    kind = record_kind(rec, kind)
    answers = {"preference": (rec.chosen, rec.rejected), "sft": (rec.chosen,), "prompt": ()}[kind]
    return enc.render(rec, answers)  # type: ignore[arg-type]


T = TypeVar("T")


class LazyEncoded(Sequence[T], Generic[T]):
    """Records tokenised on first use (and kept): ``len`` and indexing like a list."""

    def __init__(self, records: Sequence[Record], fn: Callable[[Record], T]) -> None:
        self.records = records
        self._fn = fn
        self._done: dict[int, T] = {}

    def __len__(self) -> int:
        return len(self.records)

    def char_lengths(self) -> list[int]:
        """Each record's text length in characters (no tokenising)."""
        return [rec.chars for rec in self.records]

    @overload
    def __getitem__(self, i: int) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> list[T]: ...
    def __getitem__(self, i: int | slice) -> T | list[T]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        item = self._done.get(i)
        if item is None:
            item = self._fn(self.records[i])
            self._done[i] = item
        return item

    def __iter__(self) -> Iterator[T]:
        for i in range(len(self)):
            yield self[i]

    @property
    def encoded_count(self) -> int:
        return len(self._done)


# ---------------------------------------------------------------- reading


def _parse_all(rows: list[tuple[str, dict[str, Any]]], kind: str, columns: dict[str, str]) -> list[Record]:
    records = [parse_record(obj, where, kind, columns) for where, obj in rows]
    _check_one_shape(records)
    return records


def _check_one_shape(records: list[Record]) -> None:
    """Rows of one dataset share a shape: a row that differs is named, not guessed at."""
    if not records:
        return
    first = records[0]
    convo = first.conversational
    paired = first.rejected is not None
    for rec in records[1:]:
        if (rec.rejected is not None) != paired:
            raise DataError(f"{rec.where}: row shape '{rec.shape}' differs from the first row's '{first.shape}' ({first.where}); one dataset, one shape")
        if rec.conversational != convo:
            kind = "conversational" if convo else "plain-text"
            raise DataError(f"{rec.where}: row shape '{rec.shape}' differs from the first row's {kind} shape '{first.shape}' ({first.where}); one dataset, one shape")


def load_records(path: str, kind: str, split: str = "train", *, columns: str = "", limit: int = 0) -> list[Record]:
    """Parsed rows of ``split`` (``train``, ``eval``/``test``, with an optional slice)."""
    rows = read_split(path, _split_name(split))
    if limit:
        rows = rows[:limit]
    return _parse_all(rows, kind, parse_columns(columns))


def _split_name(split: str) -> str:
    return "test" if split == "eval" else split


def resolve_data_file(path: str, split: str = "train") -> Path:
    """A local data file: the file itself, or a folder's ``train.jsonl`` / ``valid.jsonl``."""
    p = Path(path).expanduser()
    if p.is_dir():
        names = {"train": ["train.jsonl", "train.json"]}.get(split, ["valid.jsonl", "eval.jsonl", "test.jsonl", "valid.json"])
        for name in names:
            if (p / name).exists():
                return p / name
        raise DataError(f"{p}: folder has no {' or '.join(names)}")
    if not p.exists():
        raise DataError(f"{p}: data file not found")
    return p


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every row of a local JSONL/JSON file."""
    return [(int(where.rpartition(":")[2]), obj) for where, obj in read_json_rows(path)]


# ---------------------------------------------------------------- compatibility loaders (whole file, eager)


def load_pairs(path: str, tokenizer: Any, max_length: int, split: str = "train", *, chat_template: str = "auto", template_file: str = "") -> list[PreferencePair]:
    enc = Encoder(tokenizer, max_length, chat_template, template_file)
    return [encode(enc, r, "preference") for r in load_records(path, "preference", split)]  # type: ignore[misc]


def load_completions(path: str, tokenizer: Any, max_length: int, split: str = "train", *, chat_template: str = "auto", template_file: str = "") -> list[Completion]:
    enc = Encoder(tokenizer, max_length, chat_template, template_file)
    return [encode(enc, r, "sft") for r in load_records(path, "sft", split)]  # type: ignore[misc]


def load_prompts(path: str, tokenizer: Any, max_length: int, split: str = "train", *, chat_template: str = "auto", template_file: str = "") -> list[Prompt]:
    enc = Encoder(tokenizer, max_length, chat_template, template_file)
    return [encode(enc, r, "prompt") for r in load_records(path, "prompt", split)]  # type: ignore[misc]


# ---------------------------------------------------------------- a run's data


@dataclass(frozen=True)
class SourceInfo:
    """Where a split's rows came from, for summaries and model cards."""

    spec: str
    split: str
    kind: str  # "jsonl file", "Hub dataset", ...
    rows: int
    shape: str


class RunData:
    """The data of a run as its config names it: records read once, encoded lazily.

    ``records(role)`` parses (no tokenizer needed: safe before any model download);
    ``pairs/completions/prompts(role)`` tokenise with the run's tokenizer on first use.
    ``role`` is ``train`` or ``eval``.
    """

    def __init__(self, cfg: RunConfig, tokenizer: Any = None) -> None:
        from engine.config import resolve_path

        self.cfg = cfg
        d = cfg.data
        self.train_spec = resolve_path(cfg, d.train)
        self.eval_spec = resolve_path(cfg, d.eval) if d.eval else ""
        self.columns = parse_columns(d.columns)
        self.tokenizer = tokenizer
        self._records: dict[tuple[str, str], list[Record]] = {}
        self._loaded: dict[str, Any] = {}  # what datasets loaded, per folder or Hub id: loaded once
        self._encoder: Encoder | None = None
        self.sources: dict[str, SourceInfo] = {}

    def eval_source(self) -> tuple[str, str]:
        """(spec, split) of the eval data: ``data.eval``, else ``data.train``'s eval split when it has one."""
        d = self.cfg.data
        if self.eval_spec:
            same = Path(self.eval_spec).expanduser().is_dir() or is_hub_id(self.eval_spec)
            return self.eval_spec, d.eval_split if same else _plain_split(d.eval_split)
        if self.train_spec and (Path(self.train_spec).expanduser().is_dir() or is_hub_id(self.train_spec)):
            try:
                splits = available_splits(self.train_spec, self._loaded)
            except DataError:
                return "", ""
            name = d.eval_split.split("[")[0]
            if splits and (name in splits or (name == "test" and any(s in splits for s in ("valid", "validation")))):
                return self.train_spec, d.eval_split
        return "", ""

    def has_eval(self) -> bool:
        return bool(self.eval_source()[0])

    def records(self, role: str, kind: str) -> list[Record]:
        key = (role, kind)
        if key not in self._records:
            d = self.cfg.data
            if role == "train":
                spec, split, limit = self.train_spec, d.train_split, d.max_train_examples
                key_name, split_key = "data.train", "data.train_split"
            else:
                spec, split = self.eval_source()
                limit, key_name, split_key = d.max_eval_examples, "data.eval", "data.eval_split"
                if not spec:
                    self._records[key] = []
                    return []
            if Path(spec).expanduser().is_file():
                split = _plain_split(split)
            rows = read_split(spec, split, key=key_name, split_key=split_key, cache=self._loaded)
            if limit:
                rows = rows[:limit]
            recs = _parse_all(rows, kind, self.columns)
            self._records[key] = recs
            self.sources[role] = SourceInfo(spec, split, describe_source(spec), len(recs), recs[0].shape if recs else "")
        return self._records[key]

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            if self.tokenizer is None:
                raise RuntimeError("RunData needs a tokenizer to encode")
            d = self.cfg.data
            from engine.config import resolve_path

            self._encoder = Encoder(self.tokenizer, self.cfg.model.max_length, d.chat_template, resolve_path(self.cfg, d.chat_template_file) if d.chat_template_file else "")
        return self._encoder

    def _encoded(self, role: str, kind: str) -> Any:
        recs = self.records(role, kind)
        enc = self.encoder
        lazy = LazyEncoded(recs, lambda r: encode(enc, r, kind))
        return lazy if role == "train" else list(lazy)

    def truncation(self, kind: str, sample: int = 256) -> tuple[int, int]:
        """(truncated, looked at) over the first ``sample`` training rows: how often
        ``model.max_length`` cuts a row (tokenises only those rows)."""
        recs = self.records("train", kind)[:sample]
        enc = self.encoder
        cut = sum(1 for r in recs if render(enc, r, kind).truncated)
        return cut, len(recs)

    def pairs(self, role: str) -> Any:
        return self._encoded(role, "preference")

    def completions(self, role: str) -> Any:
        return self._encoded(role, "sft")

    def prompts(self, role: str) -> Any:
        return self._encoded(role, "prompt")


def _plain_split(split: str) -> str:
    """A single file has no split names: only the slice of ``split`` applies to it."""
    name, bracket, rest = split.partition("[")
    return f"file[{rest}" if bracket else "file"


def run_data(ctx: Any) -> RunData:
    """The run's :class:`RunData` (made by the runner before the model loaded), or a new one."""
    data = getattr(ctx, "data", None)
    if not isinstance(data, RunData):
        data = RunData(ctx.cfg, ctx.tokenizer)
        ctx.data = data
    elif data.tokenizer is None:
        data.tokenizer = ctx.tokenizer
    return data


def check_run_data(cfg: RunConfig) -> RunData:
    """Read and check the run's train and eval rows (files, splits, columns, shapes) — before
    any model is downloaded, so a typo costs seconds, not a download."""
    data = RunData(cfg)
    kind = data_kind(cfg.algorithm)
    if kind is None:
        return data
    data.records("train", kind)
    data.records("eval", kind)
    return data
