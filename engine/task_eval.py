"""``eval/task_score``: the share of held-out prompts the model answers exactly right.

One number that compares every algorithm on the same axis. When the data's task has a
reward function (``data.task_reward``, a name in the reward-function registry of
``engine.rewards``; the built-in sorting presets name ``exact_sort``), each evaluation
generates one greedy completion (temperature 0, ``generation.max_new_tokens``) for every
held-out prompt (the prompts of ``data.eval``, at most ``data.max_eval_examples``, each
distinct prompt once) and scores it 1 or 0:

* 1 when the completion ended with EOS (it was not cut at ``max_new_tokens``) and the
  task's reward function gives it at least 1 (a task reward returns 1 for an exactly
  right answer);
* 0 otherwise.

``eval/task_score`` is the mean over prompts. SFT, DPO, PPO and GRPO call
:meth:`TaskScorer.evaluate` from their ``evaluate``; PPO and GRPO, which already generate
greedy completions for their eval prompts, score those with :meth:`TaskScorer.score`. The
reward model does not generate and has no task score.

The reward function sees the prompt text and the completion text (EOS removed) and, for
prompt-only data, the row's extra fields; for SFT and preference data the extras are empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.rewards import RegisteredReward, get_reward

if TYPE_CHECKING:
    from engine.algorithms.base import TrainContext
    from engine.config import RunConfig

CHUNK = 64  # prompts generated together


@dataclass(frozen=True)
class TaskPrompt:
    """A held-out prompt: its tokens, its text (what the reward function reads) and extras."""

    prompt_ids: tuple[int, ...]
    text: str
    extra: dict[str, Any] = field(default_factory=dict)


def distinct(prompts: Sequence[TaskPrompt]) -> list[TaskPrompt]:
    """Each prompt once (preference data repeats a prompt for each of its pairs)."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for p in prompts:
        if p.prompt_ids and p.prompt_ids not in seen:
            seen.add(p.prompt_ids)
            out.append(p)
    return out


def from_ids(tokenizer: Any, prompt_ids: Sequence[Sequence[int]]) -> list[TaskPrompt]:
    """Task prompts from token ids alone (SFT's completions): the text is decoded back."""
    return [TaskPrompt(tuple(ids), tokenizer.decode(list(ids))) for ids in prompt_ids]


class TaskScorer:
    """Scores greedy answers with the task's reward function (1 or 0 each)."""

    def __init__(self, reward: RegisteredReward) -> None:
        self.reward = reward

    @classmethod
    def from_config(cls, cfg: RunConfig) -> TaskScorer | None:
        """The scorer ``data.task_reward`` names, or None when it names none."""
        name = cfg.data.task_reward.strip()
        return cls(get_reward(name, "data.task_reward")) if name else None

    def correct(self, prompts: Sequence[str], completions: Sequence[str], finished: Sequence[bool], extras: Sequence[dict[str, Any]]) -> list[float]:
        """1.0 for each completion that ended with EOS and gets the reward function's full score."""
        values = [float(v) for v in self.reward.fn(prompts, completions, extras)]
        if len(values) != len(completions):
            raise ValueError(f"reward function {self.reward.name!r} returned {len(values)} scores for {len(completions)} completions")
        return [1.0 if done and v >= 1.0 - 1e-9 else 0.0 for v, done in zip(values, finished, strict=True)]

    def score(self, prompts: Sequence[str], completions: Sequence[str], finished: Sequence[bool], extras: Sequence[dict[str, Any]]) -> float:
        right = self.correct(prompts, completions, finished, extras)
        return sum(right) / len(right) if right else 0.0

    def evaluate(self, ctx: TrainContext, prompts: Sequence[TaskPrompt]) -> dict[str, float]:
        """``{"task_score": share}`` for greedy answers of ``ctx.model`` to ``prompts`` ({} when none)."""
        from engine.rollout import eos_token_ids, sample_completions

        rows = distinct(prompts)
        if not rows:
            return {}
        eos = eos_token_ids(ctx.tokenizer)
        right: list[float] = []
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            rollout, texts = sample_completions(ctx, [p.prompt_ids for p in part], eos, 0.0)
            right.extend(self.correct([p.text for p in part], texts, rollout.finished, [p.extra for p in part]))
            ctx.phase("task score", min(start + CHUNK, len(rows)), len(rows))
        return {"task_score": sum(right) / len(right)}


__all__ = ["TaskPrompt", "TaskScorer", "distinct", "from_ids"]
