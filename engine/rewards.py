"""Reward functions for PPO and GRPO, registered by name.

A reward function takes the prompts, the completions (decoded text, EOS removed) and
each prompt row's extra fields from the data file, and returns one float per completion::

    from engine.rewards import register_reward

    @register_reward("shorter_is_better", "1 / (1 + words)")
    def shorter(prompts, completions, extras):
        return [1.0 / (1 + len(c.split())) for c in completions]

Registration is explicit Python (your own script registers, then starts a ``Run``); a
preset only *names* functions (``ppo.reward_function``, ``grpo.reward_functions``) and
never causes code to be imported or executed.

Built-ins (for the built-in letter-sorting task and for tests): ``sorted_letters``,
``exact_sort``, ``letters_only`` and ``length``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError

RewardFunction = Callable[[Sequence[str], Sequence[str], Sequence[dict[str, Any]]], Sequence[float]]


@dataclass(frozen=True)
class RegisteredReward:
    name: str
    fn: RewardFunction
    description: str
    builtin: bool


_REGISTRY: dict[str, RegisteredReward] = {}


def register_reward(name: str, description: str = "", *, replace: bool = False) -> Callable[[RewardFunction], RewardFunction]:
    """Decorator: make ``fn`` available to presets as ``name``."""
    if not name or "," in name or name != name.strip():
        raise ValueError(f"reward function name {name!r}: use a non-empty name without commas or surrounding spaces")

    def add(fn: RewardFunction) -> RewardFunction:
        old = _REGISTRY.get(name)
        if old is not None and not replace:
            raise ValueError(f"reward function {name!r} is already registered (pass replace=True to override)")
        doc = (fn.__doc__ or "").strip()
        _REGISTRY[name] = RegisteredReward(name, fn, description or (doc.splitlines()[0] if doc else ""), builtin=False)
        return fn

    return add


def unregister_reward(name: str) -> None:
    if name in _REGISTRY and not _REGISTRY[name].builtin:
        del _REGISTRY[name]


def available_rewards() -> list[RegisteredReward]:
    return sorted(_REGISTRY.values(), key=lambda r: (not r.builtin, r.name))


def get_reward(name: str, key: str = "reward function") -> RegisteredReward:
    try:
        return _REGISTRY[name]
    except KeyError:
        names = ", ".join(r.name for r in available_rewards())
        raise ConfigError(f"{key} = {name!r} is not a registered reward function; available: {names} (register your own with engine.rewards.register_reward)") from None


def parse_reward_names(spec: str, key: str) -> list[RegisteredReward]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{key} is empty; name at least one registered reward function")
    return [get_reward(n, key) for n in names]


def score_completions(
    functions: Sequence[RegisteredReward],
    prompts: Sequence[str],
    completions: Sequence[str],
    extras: Sequence[dict[str, Any]],
) -> tuple[list[float], dict[str, list[float]]]:
    """Summed scores, and each function's own scores (for ``rewards/<name>`` metrics)."""
    per: dict[str, list[float]] = {}
    for f in functions:
        values = [float(v) for v in f.fn(prompts, completions, extras)]
        if len(values) != len(completions):
            raise ValueError(f"reward function {f.name!r} returned {len(values)} scores for {len(completions)} completions")
        per[f.name] = values
    total = [sum(vals) for vals in zip(*per.values(), strict=True)] if per else [0.0] * len(completions)
    return total, per


# ---------------------------------------------------------------- built-ins


def _builtin(name: str, description: str) -> Callable[[RewardFunction], RewardFunction]:
    def add(fn: RewardFunction) -> RewardFunction:
        _REGISTRY[name] = RegisteredReward(name, fn, description, builtin=True)
        return fn

    return add


def prompt_letters(prompt: str) -> list[str]:
    """The letters a ``sort: q c m f`` prompt asks to sort (its last ``sort:`` line)."""
    lines = [ln for ln in prompt.splitlines() if "sort:" in ln]
    body = lines[-1].split("sort:", 1)[1] if lines else prompt
    return body.split()


def sorted_letters_score(prompt: str, completion: str) -> float:
    """Order x coverage, in [0, 1]; 1 only for the prompt's letters in alphabetical order.

    The answer is read strictly: words are what single spaces separate, so a doubled,
    leading or trailing space makes an empty word, and any word that is not one letter
    counts as an invented letter. order: adjacent pairs of letters in strictly increasing
    order, divided by the pairs the answer *should* have (the prompt's letters - 1) or
    the pairs it has, whichever is more, so a one-letter answer earns no order;
    coverage: letters shared with the prompt (as multisets) divided by the larger of the
    two counts, so missing, extra or invented letters cost. (EOS is the caller's: PPO's
    ``ppo.missing_eos_penalty``, GRPO's ``grpo.mask_truncated_completions``.)
    """
    want = prompt_letters(prompt)
    got = completion.split(" ")
    if not completion or not want:
        return 0.0

    def letter(w: str) -> bool:
        return len(w) == 1 and w.isalpha()

    in_order = sum(1 for a, b in zip(got, got[1:], strict=False) if letter(a) and letter(b) and a < b)
    order = in_order / max(len(want) - 1, len(got) - 1, 1)
    shared = sum((Counter(want) & Counter(w for w in got if letter(w))).values())
    coverage = shared / max(len(want), len(got))
    if len(want) == 1:
        order = 1.0 if got == want else 0.0
    return order * coverage


def exact_sort_answer(prompt: str) -> str:
    """The one right answer to a ``sort:`` prompt: its letters sorted, single spaces between."""
    return " ".join(sorted(prompt_letters(prompt)))


@_builtin("sorted_letters", "Sorting task: adjacent letters in order (of the pairs needed) x share of the prompt's letters (0..1).")
def sorted_letters(prompts: Sequence[str], completions: Sequence[str], extras: Sequence[dict[str, Any]]) -> list[float]:
    return [sorted_letters_score(p, c) for p, c in zip(prompts, completions, strict=True)]


@_builtin("exact_sort", "Sorting task: 1 when the answer is exactly the prompt's letters sorted (single spaces, nothing else), else 0.")
def exact_sort(prompts: Sequence[str], completions: Sequence[str], extras: Sequence[dict[str, Any]]) -> list[float]:
    return [1.0 if c == exact_sort_answer(p) and c else 0.0 for p, c in zip(prompts, completions, strict=True)]


@_builtin("letters_only", "Format: 1 when the answer is single letters separated by single spaces, else 0.")
def letters_only(prompts: Sequence[str], completions: Sequence[str], extras: Sequence[dict[str, Any]]) -> list[float]:
    out = []
    for c in completions:
        words = c.split(" ")
        out.append(1.0 if c and all(len(w) == 1 and w.isalpha() for w in words) else 0.0)
    return out


@_builtin("length", "Length in words divided by 10 (a toy reward to check that RL moves length).")
def length(prompts: Sequence[str], completions: Sequence[str], extras: Sequence[dict[str, Any]]) -> list[float]:
    return [len(c.split()) / 10.0 for c in completions]


__all__ = [
    "RegisteredReward",
    "RewardFunction",
    "available_rewards",
    "exact_sort_answer",
    "get_reward",
    "parse_reward_names",
    "register_reward",
    "score_completions",
    "sorted_letters_score",
    "unregister_reward",
]
