"""Algorithms by name. Each module holds one algorithm with the same small interface."""

from __future__ import annotations

from engine.algorithms.base import Algorithm, TrainContext


def algorithm_class(name: str) -> type[Algorithm]:
    if name == "sft":
        from engine.algorithms.sft import Sft

        return Sft
    if name == "dpo":
        from engine.algorithms.dpo import Dpo

        return Dpo
    if name == "reward":
        from engine.algorithms.reward import RewardModelling

        return RewardModelling
    if name == "ppo":
        from engine.algorithms.ppo import Ppo

        return Ppo
    if name == "grpo":
        from engine.algorithms.grpo import Grpo

        return Grpo
    raise KeyError(name)


__all__ = ["Algorithm", "TrainContext", "algorithm_class"]
