"""A trained run and its base model answering the same prompt, token by token (``rlhf-tui chat``).

    pair = load_side_by_side("runs/tiny-sft-...")            # both models, through mlx-lm
    conv = Conversation()
    conv.add_user("sort: q c m")
    for piece in stream_side_by_side(pair, conv):           # pieces of both answers, interleaved
        print(piece.side, piece.text)

Both answers come from ``mlx_lm.stream_generate`` (the prompt through the tokenizer's chat
template when it has one), stepped in turn in the calling thread, so they grow together
without two threads competing for the device. Each model keeps its own history: the
trained model sees its own earlier answers, the base model its own. No UI code here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIDES = ("trained", "base")


@dataclass
class SideBySide:
    """The two models of a chat: ``trained`` (base + the run's weights) and ``base``."""

    models: dict[str, tuple[Any, Any]]  # side -> (model, tokenizer)
    run_dir: Path
    step: int | None
    base_model: str

    def label(self, side: str) -> str:
        if side == "trained":
            return f"trained · {self.run_dir.name}" + (f" · step {self.step}" if self.step is not None else "")
        return f"base · {self.base_model}"


def load_side_by_side(run_dir: str | Path, step: int | None = None, progress: Callable[[str], None] | None = None) -> SideBySide:
    """Load a run's trained model (latest weights or checkpoint ``step``) and its base model."""
    import mlx.core as mx
    from mlx_lm import load

    from engine.api import adapter_path, base_model_path, run_config
    from engine.fuse import base_model_id, weights_step
    from engine.trained_model import load_trained_model

    say = progress or (lambda text: None)
    folder = adapter_path(run_dir, step)  # RunDirError (one line) before anything loads
    cfg = run_config(run_dir)
    base = base_model_path(run_dir)
    say("loading the trained model")
    model, tokenizer, _ = load_trained_model(folder)  # base as trained, init_from chain, the run's weights
    trained = (model, tokenizer)
    say("loading the base model")
    base_model, base_tok = load(base, tokenizer_config={"trust_remote_code": cfg.model.trust_remote_code})
    base_model.eval()
    mx.eval(base_model.parameters())
    shown_step = step if step is not None else weights_step(run_dir, folder)
    return SideBySide({"trained": trained, "base": (base_model, base_tok)}, Path(run_dir), shown_step, base_model_id(cfg.model.path, base))


@dataclass
class Conversation:
    """The messages each side has seen: the same user turns, each side's own answers."""

    history: dict[str, list[dict[str, str]]] = field(default_factory=lambda: {s: [] for s in SIDES})

    def add_user(self, text: str) -> None:
        for side in SIDES:
            self.history[side].append({"role": "user", "content": text})

    def add_answer(self, side: str, text: str) -> None:
        self.history[side].append({"role": "assistant", "content": text})

    def clear(self) -> None:
        for side in SIDES:
            self.history[side].clear()


def prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The tokens a model continues from: its chat template when it has one, else the turns as lines."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return list(ids)
    text = "\n".join(m["content"] for m in messages)
    if not text.endswith("\n"):
        text += "\n"
    return list(tokenizer.encode(text))


@dataclass(frozen=True)
class AnswerPiece:
    """New text of one side's answer; ``done`` on its last piece (with the totals)."""

    side: str
    text: str
    done: bool = False
    tokens: int = 0
    tokens_per_sec: float = 0.0
    finish_reason: str | None = None


def stream_side_by_side(
    pair: SideBySide,
    conversation: Conversation,
    *,
    max_tokens: int = 256,
    temperature: float = 0.0,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[AnswerPiece]:
    """Both answers to the conversation's last user turn, one token of each side in turn.

    The finished answers are added to ``conversation``; a cancelled stream adds what it had."""
    with _GENERATION_LOCK, own_generation_stream():
        yield from _stream(pair, conversation, max_tokens, temperature, cancelled)


_GENERATION_LOCK = threading.Lock()


@contextlib.contextmanager
def own_generation_stream() -> Iterator[None]:
    """mlx-lm generates on a module-level stream made by the thread that imported it; MLX
    streams belong to their thread, so a worker thread lends mlx-lm one of its own."""
    import importlib

    import mlx.core as mx

    mlx_generate = importlib.import_module("mlx_lm.generate")  # the module (mlx_lm.generate is also a function)
    previous = mlx_generate.generation_stream
    mlx_generate.generation_stream = mx.new_stream(mx.default_device())
    try:
        yield
    finally:
        mlx_generate.generation_stream = previous


def _stream(pair: SideBySide, conversation: Conversation, max_tokens: int, temperature: float, cancelled: Callable[[], bool]) -> Iterator[AnswerPiece]:
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    sampler = make_sampler(temp=temperature)
    streams: dict[str, Iterator[Any]] = {}
    for side in SIDES:
        model, tokenizer = pair.models[side]
        ids = prompt_tokens(tokenizer, conversation.history[side])
        streams[side] = stream_generate(model, tokenizer, ids, max_tokens=max_tokens, sampler=sampler)
    answers = {side: "" for side in SIDES}
    try:
        while streams:
            for side in list(streams):
                if cancelled():
                    return
                try:
                    r = next(streams[side])
                except StopIteration:
                    del streams[side]
                    yield AnswerPiece(side, "", done=True)
                    continue
                answers[side] += r.text
                if r.finish_reason is not None:
                    del streams[side]
                yield AnswerPiece(side, r.text, r.finish_reason is not None, r.generation_tokens, r.generation_tps, r.finish_reason)
    finally:
        for gen in streams.values():
            gen.close()
        for side in SIDES:
            conversation.add_answer(side, answers[side])


__all__ = ["AnswerPiece", "Conversation", "SideBySide", "load_side_by_side", "own_generation_stream", "prompt_tokens", "stream_side_by_side"]
