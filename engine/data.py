"""Readers for preference, SFT and prompt-only data, and their tokenisation.

Accepted shapes (one JSON object per line in ``.jsonl``, or a list in ``.json``):

* preference, plain:          ``{"prompt": str, "chosen": str, "rejected": str}``, or TRL's
  implicit prompt ``{"chosen": str, "rejected": str}`` (the common prefix is the prompt)
* preference, conversational: ``{"chosen": [messages], "rejected": [messages]}`` sharing a
  prompt prefix, or ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``
* SFT:                        ``{"prompt": str, "completion": str}``, ``{"messages": [...]}``,
  ``{"text": str}``, or any preference row (its chosen answer is used)
* prompt-only (PPO/GRPO):     ``{"prompt": str}`` or ``{"prompt": [messages]}``
* a ``system`` string (mlx-lm-lora's DPO/GRPO data) turns a row into a chat: system +
  user prompt, assistant answers

A folder is read as mlx-lm lays data out: ``train.jsonl`` and ``valid.jsonl``. A ``.json``
file may also hold one object per line (``datasets``' ``to_json`` default); ``.parquet`` and
``.arrow`` files (``datasets`` exports) are read when pyarrow is installed.
Every problem is reported with the file and line number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import DataError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Record:
    """One parsed row before tokenisation, with where it came from."""

    source: str
    line: int
    prompt: str | Messages
    chosen: str | Messages | None = None
    rejected: str | Messages | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class PreferencePair:
    """A tokenised preference pair: the prompt once, then each answer (EOS included)."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    prompt: str
    chosen: str
    rejected: str
    where: str

    @property
    def num_tokens(self) -> int:
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


@dataclass(frozen=True)
class Completion:
    """A tokenised prompt + completion for SFT."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    where: str


@dataclass(frozen=True)
class Prompt:
    """A tokenised prompt for on-policy generation (PPO, GRPO)."""

    prompt_ids: tuple[int, ...]
    text: str
    where: str
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- files


def resolve_data_file(path: str, split: str = "train") -> Path:
    """A file, or a folder holding ``train.jsonl`` / ``valid.jsonl`` (``eval`` also accepted)."""
    p = Path(path).expanduser()
    if p.is_dir():
        names = {"train": ["train.jsonl", "train.json"], "eval": ["valid.jsonl", "eval.jsonl", "test.jsonl", "valid.json"]}[split]
        for name in names:
            if (p / name).exists():
                return p / name
        raise DataError(f"{p}: folder has no {' or '.join(names)}")
    if not p.exists():
        raise DataError(f"{p}: data file not found")
    return p


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every row; blank lines are skipped."""
    if path.suffix in (".parquet", ".arrow"):
        return _read_table_rows(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    if path.suffix == ".json" and not _looks_like_json_lines(text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None) or [data]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of objects")
        for i, obj in enumerate(data, 1):
            if not isinstance(obj, dict):
                raise DataError(f"{path}: item {i} is {type(obj).__name__}, expected an object")
            rows.append((i, obj))
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, found {type(obj).__name__}")
            rows.append((lineno, obj))
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty)")
    return rows


def _looks_like_json_lines(text: str) -> bool:
    """A ``.json`` file holding one object per line (what ``datasets``' ``to_json`` writes)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].lstrip().startswith("{"):
        return False
    try:
        json.loads(lines[0])
    except json.JSONDecodeError:
        return False
    return True


def _read_table_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a Parquet or Arrow file (as Hugging Face ``datasets`` saves them), via pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading {path.suffix} files needs pyarrow (uv add pyarrow), "
            "or convert it to JSONL: datasets.Dataset.from_parquet(path).to_json('train.jsonl')"
        ) from None
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            with pa.memory_map(str(path)) as source:
                try:
                    table = pa.ipc.open_stream(source).read_all()
                except pa.ArrowInvalid:
                    table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    rows = [(i, obj) for i, obj in enumerate(table.to_pylist(), 1)]
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty)")
    return rows


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _check_text(value: Any, key: str, where: str) -> str | Messages:
    if isinstance(value, str):
        return value
    if _is_messages(value):
        return value
    raise DataError(f"{where}: '{key}' must be a string or a list of {{role, content}} messages, found {type(value).__name__}")


def parse_record(obj: dict[str, Any], source: str, line: int, kind: str) -> Record:
    where = f"{source}:{line}"
    if kind == "preference":
        missing = [k for k in ("chosen", "rejected") if k not in obj]
        if missing:
            raise DataError(f"{where}: missing field {' and '.join(repr(m) for m in missing)} (preference rows need 'chosen' and 'rejected')")
        chosen = _check_text(obj["chosen"], "chosen", where)
        rejected = _check_text(obj["rejected"], "rejected", where)
        if "prompt" in obj:
            prompt = _check_text(obj["prompt"], "prompt", where)
        elif isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen, rejected = _split_shared_prefix(chosen, rejected, where)
        elif isinstance(chosen, str) and isinstance(rejected, str):
            prompt, chosen, rejected = _split_shared_text(chosen, rejected, where)
        else:
            raise DataError(f"{where}: missing field 'prompt' (needed when one of chosen/rejected is a string and the other messages)")
        if "system" in obj:
            prompt = _with_system(obj["system"], prompt, where)
            chosen, rejected = _as_answer(chosen), _as_answer(rejected)
        return Record(source, line, prompt, chosen, rejected)
    if kind == "sft":
        if "messages" in obj:
            msgs = _check_text(obj["messages"], "messages", where)
            if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
                raise DataError(f"{where}: 'messages' must end with an assistant message")
            return Record(source, line, msgs[:-1], [msgs[-1]])
        if "completion" in obj:
            return Record(source, line, _check_text(obj.get("prompt", ""), "prompt", where), _check_text(obj["completion"], "completion", where))
        if "chosen" in obj:
            return parse_record(obj, source, line, "preference")
        if "text" in obj:
            return Record(source, line, "", _check_text(obj["text"], "text", where))
        raise DataError(f"{where}: expected 'prompt'+'completion', 'messages', 'text' or 'chosen' fields, found {sorted(obj)}")
    if kind == "prompt":
        if "prompt" not in obj:
            if "messages" in obj:
                msgs = _check_text(obj["messages"], "messages", where)
                return Record(source, line, [m for m in msgs if m["role"] != "assistant"] if isinstance(msgs, list) else msgs, extra=obj)
            raise DataError(f"{where}: missing field 'prompt'")
        prompt = _check_text(obj["prompt"], "prompt", where)
        if "system" in obj:
            prompt = _with_system(obj["system"], prompt, where)
        return Record(source, line, prompt, extra={k: v for k, v in obj.items() if k not in ("prompt", "system")})
    raise ValueError(kind)


def _with_system(system: Any, prompt: str | Messages, where: str) -> Messages:
    """mlx-lm-lora's ``system`` field: the prompt becomes a chat of a system and a user message."""
    if not isinstance(system, str):
        raise DataError(f"{where}: 'system' must be a string, found {type(system).__name__}")
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if messages and messages[0].get("role") == "system":
        return messages
    return [{"role": "system", "content": system}, *messages]


def _as_answer(answer: str | Messages | None) -> str | Messages | None:
    return [{"role": "assistant", "content": answer}] if isinstance(answer, str) else answer


def _common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items (messages, or characters) ``a`` and ``b`` share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _split_shared_prefix(chosen: Messages, rejected: Messages, where: str) -> tuple[Messages, Messages, Messages]:
    n = _common_prefix(chosen, rejected)
    if n == 0:
        raise DataError(f"{where}: conversational 'chosen' and 'rejected' share no prompt messages")
    if n == len(chosen) or n == len(rejected):
        raise DataError(f"{where}: 'chosen' and 'rejected' have no differing answer after their shared prompt")
    return chosen[:n], chosen[n:], rejected[n:]


def _split_shared_text(chosen: str, rejected: str, where: str) -> tuple[str, str, str]:
    """TRL's implicit prompt for plain text: the common prefix is the prompt (a space before
    the first differing character stays with the answers, as TRL's ``extract_prompt`` does)."""
    n = _common_prefix(chosen, rejected)
    if n == 0:
        raise DataError(f"{where}: missing field 'prompt', and 'chosen' and 'rejected' share no prompt text to take it from")
    if n == len(chosen) or n == len(rejected):
        raise DataError(f"{where}: 'chosen' and 'rejected' have no differing answer after their shared prompt text")
    if chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def load_records(path: str, kind: str, split: str = "train") -> list[Record]:
    file = resolve_data_file(path, split)
    return [parse_record(obj, str(file), line, kind) for line, obj in read_rows(file)]


# ---------------------------------------------------------------- tokenisation


class Encoder:
    """Turns records into token ids with the tokenizer's chat template where there is one."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tok = tokenizer
        self.max_length = max_length
        self.eos = tokenizer.eos_token_id
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def prompt_text(self, prompt: str | Messages) -> str:
        if isinstance(prompt, list):
            if not self.has_template:
                return "".join(f"{m['role']}: {m['content']}\n" for m in prompt)
            return self.tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return prompt

    def completion_text(self, prompt: str | Messages, completion: str | Messages) -> tuple[str, bool]:
        """The completion as text, and whether it already ends with the EOS marker."""
        if isinstance(completion, list):
            if isinstance(prompt, list) and self.has_template:
                head = self.tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
                full = self.tok.apply_chat_template(prompt + completion, tokenize=False)
                if full.startswith(head):
                    return full[len(head):], True
            return "".join(m["content"] for m in completion), False
        return completion, False

    def encode_prompt(self, prompt: str | Messages) -> list[int]:
        text = self.prompt_text(prompt)
        if not text:
            bos = getattr(self.tok, "bos_token_id", None)
            return [bos] if bos is not None else []
        return list(self.tok.encode(text))

    def encode_completion(self, prompt: str | Messages, completion: str | Messages) -> list[int]:
        text, has_eos = self.completion_text(prompt, completion)
        ids = list(self.tok.encode(text, add_special_tokens=False))
        if not has_eos or (ids and ids[-1] != self.eos):
            if not ids or ids[-1] != self.eos:
                ids.append(self.eos)
        return ids

    def fit(self, prompt: list[int], *answers: list[int]) -> tuple[list[int], list[list[int]]]:
        longest = max(len(a) for a in answers)
        room = self.max_length - longest
        if room < 1:
            keep = max(self.max_length // 2, 1)
            prompt = prompt[-keep:]
            answers = tuple(a[: self.max_length - len(prompt)] for a in answers)
        elif len(prompt) > room:
            prompt = prompt[-room:]
        return prompt, list(answers)

    def pair(self, rec: Record) -> PreferencePair:
        p = self.encode_prompt(rec.prompt)
        c = self.encode_completion(rec.prompt, rec.chosen)  # type: ignore[arg-type]
        r = self.encode_completion(rec.prompt, rec.rejected)  # type: ignore[arg-type]
        p, (c, r) = self.fit(p, c, r)
        return PreferencePair(
            tuple(p), tuple(c), tuple(r),
            prompt=self.prompt_text(rec.prompt),
            chosen=self.completion_text(rec.prompt, rec.chosen)[0],  # type: ignore[arg-type]
            rejected=self.completion_text(rec.prompt, rec.rejected)[0],  # type: ignore[arg-type]
            where=rec.where,
        )

    def completion(self, rec: Record) -> Completion:
        p = self.encode_prompt(rec.prompt)
        c = self.encode_completion(rec.prompt, rec.chosen)  # type: ignore[arg-type]
        p, (c,) = self.fit(p, c)
        return Completion(tuple(p), tuple(c), rec.where)

    def prompt(self, rec: Record) -> Prompt:
        p = self.encode_prompt(rec.prompt)[-self.max_length :]
        return Prompt(tuple(p), self.prompt_text(rec.prompt), rec.where, rec.extra)


def load_pairs(path: str, tokenizer: Any, max_length: int, split: str = "train") -> list[PreferencePair]:
    enc = Encoder(tokenizer, max_length)
    return [enc.pair(r) for r in load_records(path, "preference", split)]


def load_completions(path: str, tokenizer: Any, max_length: int, split: str = "train") -> list[Completion]:
    enc = Encoder(tokenizer, max_length)
    return [enc.completion(r) for r in load_records(path, "sft", split)]


def load_prompts(path: str, tokenizer: Any, max_length: int, split: str = "train") -> list[Prompt]:
    enc = Encoder(tokenizer, max_length)
    return [enc.prompt(r) for r in load_records(path, "prompt", split)]
