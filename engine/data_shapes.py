"""Row shapes: which fields a row has, and how they become a prompt and its answers.

The shapes follow TRL's dataset formats (a row's *shape* is named in ``rlhf-tui data``):

preference rows (``kind="preference"``)
    ``plain``            ``prompt``, ``chosen``, ``rejected`` strings
    ``implicit-text``    ``chosen``/``rejected`` strings sharing a prefix (the prefix is the prompt)
    ``conversational``   ``prompt`` messages + ``chosen``/``rejected`` messages (TRL's explicit prompt)
    ``conversational-implicit``  ``chosen``/``rejected`` conversations sharing their first messages
    ``prompt+conversations``     a *string* ``prompt`` and *full conversations* in
                         ``chosen``/``rejected`` (``HuggingFaceH4/ultrafeedback_binarized``): the
                         shared messages are the prompt; the string prompt must be one of their
                         user turns, and is not repeated
    ``messages-prompt``  ``prompt`` messages + ``chosen``/``rejected`` strings
SFT rows (``kind="sft"``)
    ``messages``, ``prompt+completion`` (strings or messages), ``text``, or any preference row
    (its chosen answer)
prompt-only rows (``kind="prompt"``)
    ``prompt`` (string or messages) or ``messages`` (its non-assistant turns)

A ``system`` string (mlx-lm-lora's data) turns a plain row into a chat. ``data.columns``
maps other column names onto these. Anything ambiguous or inconsistent is a one-line
:class:`DataError` naming the file and row — never a silent guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import DataError

Messages = list[dict[str, str]]
OUR_COLUMNS = ("prompt", "chosen", "rejected", "completion", "messages", "text", "system", "label")

SHAPE_HELP = {
    "plain": "prompt / chosen / rejected strings",
    "implicit-text": "chosen / rejected strings with an implicit (shared-prefix) prompt",
    "conversational": "prompt messages + chosen / rejected messages",
    "conversational-implicit": "chosen / rejected conversations sharing their prompt messages",
    "prompt+conversations": "a string prompt + full chosen / rejected conversations (HuggingFaceH4 style)",
    "messages-prompt": "prompt messages + chosen / rejected strings",
    "messages": "SFT messages (the last assistant turn is the completion)",
    "prompt+completion": "SFT prompt + completion strings",
    "conversational-completion": "SFT prompt + completion messages",
    "text": "SFT plain text (no prompt)",
    "prompt-only": "a prompt string",
    "prompt-only-conversational": "prompt messages",
    "unpaired-prompt+completion": "unpaired prompt + completion strings with a true/false label (KTO)",
    "unpaired-conversational-completion": "unpaired prompt + completion messages with a true/false label (KTO)",
}


@dataclass(frozen=True)
class Record:
    """One parsed row before tokenisation, with where it came from and its shape."""

    source: str
    line: int
    prompt: str | Messages
    chosen: str | Messages | None = None
    rejected: str | Messages | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    shape: str = "plain"

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)

    @property
    def chars(self) -> int:
        """Characters of text in the prompt and answers: a tokeniser-free proxy for the row's
        length (for batching rows of similar length together before anything is tokenised)."""
        return sum(text_chars(part) for part in (self.prompt, self.chosen, self.rejected))


def text_chars(value: Any) -> int:
    """Characters of text in a string, a message list or its contents (anything else: 0)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return text_chars(value.get("content"))
    if isinstance(value, list):
        return sum(text_chars(v) for v in value)
    return 0


def parse_columns(text: str) -> dict[str, str]:
    """``data.columns``: ``"prompt=question, chosen=good"`` -> {ours: theirs}."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        ours, sep, theirs = part.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or not ours or not theirs:
            raise DataError(f"data.columns = {text!r}: expected ours=theirs pairs separated by commas, like 'prompt=question,chosen=good'")
        if ours not in OUR_COLUMNS:
            raise DataError(f"data.columns = {text!r}: '{ours}' is not a column rlhf-tui reads (one of {', '.join(OUR_COLUMNS)})")
        out[ours] = theirs
    return out


def rename_columns(obj: dict[str, Any], columns: dict[str, str], where: str) -> dict[str, Any]:
    if not columns:
        return obj
    out = {k: v for k, v in obj.items() if k not in columns}
    for ours, theirs in columns.items():
        if theirs not in obj:
            raise DataError(f"{where}: no column '{theirs}' (data.columns maps {ours}={theirs}; the row has {', '.join(sorted(obj))})")
        out[ours] = obj[theirs]
    return out


def is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _check_text(value: Any, key: str, where: str) -> str | Messages:
    if isinstance(value, str) or is_messages(value):
        return value
    if isinstance(value, list) and not value:
        raise DataError(f"{where}: '{key}' is an empty list of messages")
    raise DataError(f"{where}: '{key}' must be a string or a list of {{role, content}} messages, found {type(value).__name__}")


def _split(where: str) -> tuple[str, int]:
    source, _, line = where.rpartition(":")
    return (source, int(line)) if source and line.isdigit() else (where, 0)


def parse_record(obj: dict[str, Any], where: str, kind: str, columns: dict[str, str] | None = None) -> Record:
    """One row as a :class:`Record` of ``kind`` ('preference' | 'sft' | 'prompt')."""
    obj = rename_columns(obj, columns or {}, where)
    source, line = _split(where)
    if kind == "preference":
        return _preference(obj, where, source, line)
    if kind == "sft":
        return _sft(obj, where, source, line)
    if kind == "prompt":
        return _prompt_only(obj, where, source, line)
    if kind == "unpaired":
        return _unpaired(obj, where, source, line)
    raise ValueError(kind)


def _unpaired(obj: dict[str, Any], where: str, source: str, line: int) -> Record:
    """KTO's rows: ``prompt``/``completion``/``label`` (TRL's unpaired preference), or a
    preference pair (unpaired into a desirable and an undesirable answer by the algorithm)."""
    if "label" not in obj:
        if "chosen" in obj or "rejected" in obj:
            return _preference(obj, where, source, line)
        raise DataError(f"{where}: missing field 'label' (unpaired rows need 'prompt', 'completion' and a true/false 'label'; or give preference pairs)")
    label = obj["label"]
    if not isinstance(label, bool):
        raise DataError(f"{where}: 'label' must be true or false, found {label!r}")
    if "completion" not in obj:
        raise DataError(f"{where}: missing field 'completion' (unpaired rows need 'prompt', 'completion' and 'label')")
    rec = _sft({k: v for k, v in obj.items() if k != "label"}, where, source, line)
    return Record(source, line, rec.prompt, rec.chosen, extra={"label": label}, shape="unpaired-" + rec.shape)


def _preference(obj: dict[str, Any], where: str, source: str, line: int) -> Record:
    missing = [k for k in ("chosen", "rejected") if k not in obj]
    if missing:
        raise DataError(f"{where}: missing field {' and '.join(repr(m) for m in missing)} (preference rows need 'chosen' and 'rejected')")
    chosen = _check_text(obj["chosen"], "chosen", where)
    rejected = _check_text(obj["rejected"], "rejected", where)
    if type(chosen) is not type(rejected):
        raise DataError(f"{where}: 'chosen' and 'rejected' must both be strings or both be messages (one of each is ambiguous)")
    prompt_value = obj.get("prompt")
    if isinstance(chosen, list):
        assert isinstance(rejected, list)
        if prompt_value is None:
            prompt, c, r = _split_shared_messages(chosen, rejected, where)
            shape = "conversational-implicit"
        elif isinstance(prompt_value, str):
            prompt, c, r = _split_with_string_prompt(prompt_value, chosen, rejected, where)
            shape = "prompt+conversations"
        else:
            prompt = _check_text(prompt_value, "prompt", where)
            assert isinstance(prompt, list)
            c, r = _strip_prompt(prompt, chosen, where, "chosen"), _strip_prompt(prompt, rejected, where, "rejected")
            shape = "conversational"
        _check_answer_roles(c, "chosen", where)
        _check_answer_roles(r, "rejected", where)
        return Record(source, line, prompt, c, r, shape=shape)
    # string answers
    if prompt_value is None:
        p, c, r = _split_shared_text(chosen, rejected, where)  # type: ignore[arg-type]
        return Record(source, line, p, c, r, shape="implicit-text")
    prompt = _check_text(prompt_value, "prompt", where)
    if isinstance(prompt, list):
        return Record(source, line, prompt, _as_answer(chosen), _as_answer(rejected), shape="messages-prompt")
    if "system" in obj:
        return Record(source, line, _with_system(obj["system"], prompt, where), _as_answer(chosen), _as_answer(rejected), shape="conversational")
    return Record(source, line, prompt, chosen, rejected, shape="plain")


def _sft(obj: dict[str, Any], where: str, source: str, line: int) -> Record:
    if "messages" in obj:
        msgs = _check_text(obj["messages"], "messages", where)
        if not isinstance(msgs, list) or msgs[-1].get("role") != "assistant":
            raise DataError(f"{where}: 'messages' must be a list of messages ending with an assistant message")
        if len(msgs) < 2:
            raise DataError(f"{where}: 'messages' holds only the assistant answer; add the user turn it answers")
        return Record(source, line, msgs[:-1], [msgs[-1]], shape="messages")
    if "completion" in obj:
        prompt = _check_text(obj.get("prompt", ""), "prompt", where)
        completion = _check_text(obj["completion"], "completion", where)
        if isinstance(prompt, list):
            return Record(source, line, prompt, _as_answer(completion), shape="conversational-completion")
        if isinstance(completion, list):
            if prompt:
                return Record(source, line, [{"role": "user", "content": prompt}], completion, shape="conversational-completion")
            raise DataError(f"{where}: a conversational 'completion' needs a 'prompt'")
        if "system" in obj:
            return Record(source, line, _with_system(obj["system"], prompt, where), _as_answer(completion), shape="conversational-completion")
        return Record(source, line, prompt, completion, shape="prompt+completion")
    if "chosen" in obj:
        rec = _preference(obj, where, source, line)
        return Record(source, line, rec.prompt, rec.chosen, shape=rec.shape)
    if "text" in obj:
        text = obj["text"]
        if not isinstance(text, str):
            raise DataError(f"{where}: 'text' must be a string, found {type(text).__name__}")
        return Record(source, line, "", text, shape="text")
    raise DataError(f"{where}: expected 'prompt'+'completion', 'messages', 'text' or 'chosen' fields, found {sorted(obj)}")


def _prompt_only(obj: dict[str, Any], where: str, source: str, line: int) -> Record:
    if "prompt" not in obj:
        if "messages" in obj:
            msgs = _check_text(obj["messages"], "messages", where)
            if isinstance(msgs, list):
                turns = [m for m in msgs if m["role"] != "assistant"]
                if not turns:
                    raise DataError(f"{where}: 'messages' has no user turn to use as a prompt")
                extra = {k: v for k, v in obj.items() if k != "messages"}
                return Record(source, line, turns, extra=extra, shape="prompt-only-conversational")
        raise DataError(f"{where}: missing field 'prompt'")
    prompt = _check_text(obj["prompt"], "prompt", where)
    if "system" in obj:
        prompt = _with_system(obj["system"], prompt, where)
    extra = {k: v for k, v in obj.items() if k not in ("prompt", "system")}
    return Record(source, line, prompt, extra=extra, shape="prompt-only-conversational" if isinstance(prompt, list) else "prompt-only")


# ---------------------------------------------------------------- helpers


def _with_system(system: Any, prompt: str | Messages, where: str) -> Messages:
    """mlx-lm-lora's ``system`` field: the prompt becomes a chat of a system and a user message."""
    if not isinstance(system, str):
        raise DataError(f"{where}: 'system' must be a string, found {type(system).__name__}")
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if messages and messages[0].get("role") == "system":
        return messages
    return [{"role": "system", "content": system}, *messages]


def _as_answer(answer: str | Messages) -> Messages:
    return [{"role": "assistant", "content": answer}] if isinstance(answer, str) else answer


def common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items (messages, or characters) ``a`` and ``b`` share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _split_shared_messages(chosen: Messages, rejected: Messages, where: str) -> tuple[Messages, Messages, Messages]:
    n = _prompt_prefix(chosen, rejected)
    if n == 0:
        raise DataError(f"{where}: conversational 'chosen' and 'rejected' share no prompt messages (add a 'prompt' field)")
    if n == len(chosen) or n == len(rejected):
        raise DataError(f"{where}: 'chosen' and 'rejected' have no differing answer after their shared prompt")
    return chosen[:n], chosen[n:], rejected[n:]


def _prompt_prefix(chosen: Messages, rejected: Messages) -> int:
    """The shared messages, cut back to end on a non-assistant turn (answers start with the assistant)."""
    n = common_prefix(chosen, rejected)
    while n > 0 and chosen[n - 1].get("role") == "assistant":
        n -= 1
    return n


def _split_with_string_prompt(prompt: str, chosen: Messages, rejected: Messages, where: str) -> tuple[Messages, Messages, Messages]:
    """``HuggingFaceH4/ultrafeedback_binarized``: a string prompt and full conversations."""
    n = _prompt_prefix(chosen, rejected)
    if n == 0:
        if chosen[0].get("role") != "assistant" or rejected[0].get("role") != "assistant":
            raise DataError(f"{where}: 'chosen' and 'rejected' share no prompt messages and do not start with an assistant answer to 'prompt'")
        return [{"role": "user", "content": prompt}], chosen, rejected
    shared = chosen[:n]
    users = [m["content"] for m in shared if m.get("role") == "user"]
    if prompt.strip() and prompt.strip() not in (u.strip() for u in users):
        raise DataError(
            f"{where}: the string 'prompt' is not one of the conversations' user turns "
            "(is 'prompt' from another row, or are the conversations answers to another question?)"
        )
    if n == len(chosen) or n == len(rejected):
        raise DataError(f"{where}: 'chosen' and 'rejected' have no differing answer after their shared prompt")
    return shared, chosen[n:], rejected[n:]


def _strip_prompt(prompt: Messages, answer: Messages, where: str, key: str) -> Messages:
    """TRL's explicit prompt: answers are the assistant turns; a copy of the prompt in front is dropped."""
    if len(answer) > len(prompt) and answer[: len(prompt)] == prompt:
        return answer[len(prompt):]
    return answer


def _check_answer_roles(answer: Messages, key: str, where: str) -> None:
    if not answer or answer[0].get("role") != "assistant":
        role = answer[0].get("role") if answer else "nothing"
        raise DataError(f"{where}: the '{key}' answer starts with a {role} turn, expected an assistant turn")


def _split_shared_text(chosen: str, rejected: str, where: str) -> tuple[str, str, str]:
    """TRL's implicit prompt for plain text: the common prefix is the prompt (a space before
    the first differing character stays with the answers, as TRL's ``extract_prompt`` does)."""
    n = common_prefix(chosen, rejected)
    if n == 0:
        raise DataError(f"{where}: missing field 'prompt', and 'chosen' and 'rejected' share no prompt text to take it from")
    if n == len(chosen) or n == len(rejected):
        raise DataError(f"{where}: 'chosen' and 'rejected' have no differing answer after their shared prompt text")
    if chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]
