"""Every algorithm, declared once: name, titles, data shape, reference, panel meanings, class.

The config schema (``ALGORITHMS``), the preset editor, the generated preset reference,
the run monitor and the tests read these entries instead of keeping their own lists.

This module stays import-light (no MLX): ``engine.config`` reads it at import time and
the console reads it before any run starts. The algorithm class itself is named by
``"module:Class"`` and imported only when a run builds it (:func:`algorithm_class`).
An algorithm's config section is a dataclass in ``engine.config`` named by ``section``
(``cfg.<section>``); ``tests/test_registry.py`` checks the two agree.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.algorithms.base import Algorithm

DATA_SHAPES = ("completions", "pairs", "unpaired", "prompts")


@dataclass(frozen=True)
class AlgorithmSpec:
    """What the rest of the code needs to know about one algorithm."""

    name: str  # the value of ``algorithm`` in a preset
    title: str  # short, for the editor's section header: "DPO"
    long_title: str  # for docs headings: "Direct Preference Optimization"
    implementation: str  # "engine.algorithms.dpo:Dpo"
    data: str  # one of DATA_SHAPES: what data.train holds
    reference: bool  # keeps a frozen reference policy (or its cached log-probs)
    on_policy: bool  # trains on its own samples (its KL is measured on them)
    kl: str  # what the panel's ``kl`` means; "" when it is not defined (always null)
    reward: str  # what the panel's ``reward`` means
    sections: tuple[str, ...] = ()  # config sections it reads besides model/data/train

    @property
    def section(self) -> str:
        """Its own config section (``cfg.<name>``)."""
        return self.name

    def load(self) -> type[Algorithm]:
        module, _, cls = self.implementation.partition(":")
        return getattr(importlib.import_module(module), cls)


REGISTRY: tuple[AlgorithmSpec, ...] = (
    AlgorithmSpec(
        "sft", "SFT", "supervised fine-tuning", "engine.algorithms.sft:Sft", "completions", False, False,
        kl="", reward="mean token accuracy on completion tokens",
    ),
    AlgorithmSpec(
        "reward", "Reward model", "reward model (Bradley-Terry)", "engine.algorithms.reward:RewardModelling", "pairs", False, False,
        kl="", reward="mean score margin r_chosen - r_rejected",
    ),
    AlgorithmSpec(
        "dpo", "DPO", "Direct Preference Optimization", "engine.algorithms.dpo:Dpo", "pairs", True, False,
        kl="k2 estimate of the log-prob shift of the data's answers from the reference (measured on the data)",
        reward="mean implicit reward margin (rewards/margins)",
    ),
    AlgorithmSpec(
        "orpo", "ORPO", "ORPO (odds-ratio preference optimisation)", "engine.algorithms.orpo:Orpo", "pairs", False, False,
        kl="", reward="mean margin of beta x mean per-token log-prob, chosen - rejected (rewards/margins)",
    ),
    AlgorithmSpec(
        "simpo", "SimPO / CPO", "SimPO and CPO", "engine.algorithms.simpo:Simpo", "pairs", False, False,
        kl="", reward="mean margin of beta x log-prob (per-token mean for simpo, sum for cpo), chosen - rejected",
    ),
    AlgorithmSpec(
        "kto", "KTO", "KTO (Kahneman-Tversky optimisation)", "engine.algorithms.kto:Kto", "unpaired", True, False,
        kl="the batch's KL estimate on mismatched prompt/answer pairs, clamped at 0 (TRL's kl)",
        reward="mean implicit reward of desirable minus undesirable answers (rewards/margins)",
    ),
    AlgorithmSpec(
        "ppo", "PPO", "PPO", "engine.algorithms.ppo:Ppo", "prompts", True, True,
        kl="mean summed per-token KL of a sampled completion to the reference (objective/kl)",
        reward="mean score of the sampled completions (objective/scores)", sections=("generation",),
    ),
    AlgorithmSpec(
        "grpo", "GRPO", "GRPO", "engine.algorithms.grpo:Grpo", "prompts", True, True,
        kl="mean per-token k3 KL of the samples to the reference (null when grpo.beta = 0)",
        reward="mean summed reward of the sampled completions", sections=("generation",),
    ),
    AlgorithmSpec(
        "rloo", "RLOO", "RLOO (REINFORCE leave-one-out)", "engine.algorithms.rloo:Rloo", "prompts", True, True,
        kl="mean summed k1 KL of a sampled completion to the reference (null when rloo.beta = 0)",
        reward="mean score of the sampled completions (before the KL penalty)", sections=("generation",),
    ),
)


def names() -> tuple[str, ...]:
    return tuple(s.name for s in REGISTRY)


def spec(name: str) -> AlgorithmSpec:
    for s in REGISTRY:
        if s.name == name:
            return s
    raise KeyError(name)


def algorithm_class(name: str) -> type[Algorithm]:
    """The class that trains ``name`` (imports its module)."""
    return spec(name).load()


def sections_for(name: str) -> tuple[str, ...]:
    """Config sections that matter for ``name``: its own, then the shared ones it reads."""
    try:
        s = spec(name)
    except KeyError:
        return ()
    return (s.section, *s.sections)
