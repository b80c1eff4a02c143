"""What the model sees: records rendered through the chat template and turned into token ids.

Rules (``data.chat_template``):

* ``auto`` (default): rows with an explicit prompt are templated when the tokenizer has a
  chat template (what ``mlx_lm.generate`` does to a prompt, so training and serving see one
  format); conversational rows always are. ``never`` keeps plain rows as given. ``always``
  requires a template (the tokenizer's, or ``data.chat_template_file``).
* Raw-text shapes (``text``, implicit-prompt plain text) are never templated: they are
  already the text the model reads.
* A templated prompt is ``apply_chat_template(prompt, add_generation_prompt=True)``; an
  answer is what the template adds after it for the full conversation. Templated text is
  tokenised without adding special tokens (the template carries BOS where it wants one).
* The end of an answer is the template's end of turn, exactly once: EOS is appended only
  when the answer does not already end with a stop token (``<|im_end|>``, ``<|eot_id|>``,
  the tokenizer's EOS ids) followed by nothing but whitespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data_shapes import Messages, Record
from engine.errors import ConfigError, DataError

RAW_SHAPES = ("text", "implicit-text")
TEMPLATE_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class Rendered:
    """A record as text and ids: the prompt once, then each answer (end of turn included)."""

    prompt: str
    answers: tuple[str, ...]
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[tuple[int, ...], ...]
    templated: bool
    truncated: bool


def load_template_file(path: str) -> str:
    """A Jinja chat template from a file (``.jinja`` text, or a tokenizer_config-style JSON)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"data.chat_template_file = {path!r}: cannot read ({err.strerror})") from None
    if p.suffix == ".json":
        import json

        try:
            text = json.loads(text)["chat_template"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"data.chat_template_file = {path!r}: a .json file must hold a 'chat_template' string") from None
    try:
        import jinja2

        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(f"data.chat_template_file = {path!r}: line {err.lineno}: {err.message}") from None
    return text


class Encoder:
    """Turns records into token ids, templated by the rules above."""

    def __init__(self, tokenizer: Any, max_length: int, chat_template: str = "auto", template_file: str = "") -> None:
        if chat_template not in TEMPLATE_MODES:
            raise ConfigError(f"data.chat_template = {chat_template!r} is not allowed; expected one of {', '.join(TEMPLATE_MODES)}")
        self.tok = tokenizer
        self.max_length = max_length
        self.mode = chat_template
        self.template: str | None = load_template_file(template_file) if template_file else getattr(tokenizer, "chat_template", None) or None
        if self.mode == "always" and not self.template:
            raise ConfigError("data.chat_template = 'always' but the tokenizer has no chat template; set data.chat_template_file")
        self.eos = tokenizer.eos_token_id
        ids = set(getattr(tokenizer, "eos_token_ids", None) or ())
        if self.eos is not None:
            ids.add(self.eos)
        self.stop_ids = frozenset(ids)
        self._blank: dict[int, bool] = {}

    @property
    def has_template(self) -> bool:
        return bool(self.template)

    # -------------------------------------------------------------- text

    def templated(self, rec: Record) -> bool:
        if rec.shape in RAW_SHAPES:
            return False
        if rec.conversational or isinstance(rec.chosen, list):
            if not self.template:
                raise DataError(
                    f"{rec.where}: conversational rows need a chat template and the tokenizer has none; "
                    "set data.chat_template_file to a Jinja template"
                )
            return True
        if self.mode == "never":
            return False
        return bool(self.template)

    def _apply(self, messages: Messages, generation_prompt: bool, where: str) -> str:
        kwargs: dict[str, Any] = {"add_generation_prompt": generation_prompt, "tokenize": False}
        if self.template and self.template is not getattr(self.tok, "chat_template", None):
            kwargs["chat_template"] = self.template
        try:
            return self.tok.apply_chat_template(messages, **kwargs)
        except Exception as err:  # noqa: BLE001 - jinja raises many kinds
            raise DataError(f"{where}: the chat template failed on this row ({type(err).__name__}: {err})") from None

    @staticmethod
    def _messages(value: str | Messages, role: str) -> Messages:
        return value if isinstance(value, list) else [{"role": role, "content": value}]

    def prompt_text(self, rec: Record) -> str:
        if self.templated(rec):
            return self._apply(self._messages(rec.prompt, "user"), True, rec.where)
        return rec.prompt if isinstance(rec.prompt, str) else ""

    def answer_text(self, rec: Record, answer: str | Messages, head: str | None = None) -> str:
        if not self.templated(rec):
            return answer if isinstance(answer, str) else "".join(m["content"] for m in answer)
        prompt = self._messages(rec.prompt, "user")
        head = self.prompt_text(rec) if head is None else head
        full = self._apply(prompt + self._messages(answer, "assistant"), False, rec.where)
        if not full.startswith(head):
            raise DataError(
                f"{rec.where}: the chat template renders the prompt differently inside the full conversation, "
                "so the answer cannot be cut from it; use data.chat_template_file with a template that renders prefixes consistently"
            )
        return full[len(head):]

    # -------------------------------------------------------------- a bare prompt

    @staticmethod
    def prompt_record(prompt: str | Messages) -> Record:
        """A prompt given as text or messages (not read from a data file), as a prompt-only row."""
        return Record("prompt", 0, prompt, shape="prompt-only-conversational" if isinstance(prompt, list) else "prompt-only")

    def render_prompt(self, prompt: str | Messages) -> Rendered:
        """What the model sees for a bare prompt: templated by the same rules as data rows."""
        return self.render(self.prompt_record(prompt), ())

    # -------------------------------------------------------------- ids

    def encode_prompt(self, text: str, templated: bool) -> list[int]:
        if not text:
            bos = getattr(self.tok, "bos_token_id", None)
            return [bos] if bos is not None else []
        return list(self.tok.encode(text, add_special_tokens=not templated))

    def encode_answer(self, text: str) -> list[int]:
        ids = list(self.tok.encode(text, add_special_tokens=False)) if text else []
        if not self._ends_turn(ids):
            ids.append(self.eos)
        return ids

    def _is_blank(self, token: int) -> bool:
        if token not in self._blank:
            self._blank[token] = not self.tok.decode([token]).strip()
        return self._blank[token]

    def _ends_turn(self, ids: list[int]) -> bool:
        """The answer already ends with a stop token (then nothing but whitespace)."""
        for token in reversed(ids):
            if token in self.stop_ids:
                return True
            if not self._is_blank(token):
                return False
        return False

    def fit(self, prompt: list[int], *answers: list[int]) -> tuple[list[int], list[list[int]], bool]:
        """Keep the pair within ``max_length``: the prompt loses its left end first."""
        longest = max(len(a) for a in answers)
        room = self.max_length - longest
        truncated = False
        if room < 1:
            keep = max(self.max_length // 2, 1)
            truncated = len(prompt) > keep or any(len(a) > self.max_length - min(len(prompt), keep) for a in answers)
            prompt = prompt[-keep:]
            answers = tuple(a[: self.max_length - len(prompt)] for a in answers)
        elif len(prompt) > room:
            prompt = prompt[-room:]
            truncated = True
        return prompt, list(answers), truncated

    def render(self, rec: Record, answers: tuple[str | Messages, ...]) -> Rendered:
        templated = self.templated(rec)
        prompt = self.prompt_text(rec)
        texts = tuple(self.answer_text(rec, a, prompt) for a in answers)
        p = self.encode_prompt(prompt, templated)
        ids = [self.encode_answer(t) for t in texts]
        if ids:
            p, ids, truncated = self.fit(p, *ids)
        else:
            truncated = len(p) > self.max_length
            p = p[-self.max_length :]
        return Rendered(prompt, texts, tuple(p), tuple(tuple(a) for a in ids), templated, truncated)
