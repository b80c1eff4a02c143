"""The built-in GRPO and PPO presets raise their reward over a short run (last quarter vs first).

RL on the sorting task starts from what the built-in base model can do: it must at least
answer with the prompt's letters (in any order) for ``sorted_letters`` to have room to
climb by ordering them. ``base_copies_letters`` checks that with greedy answers; while
the built-in model does not copy, these tests are marked xfail (reported to the lead).
"""

from __future__ import annotations

import json
from functools import cache

import pytest

from engine.presets import builtin_dir, load_preset
from engine.run import Run
from tests.helpers import metrics_rows


@cache
def base_copies_letters(threshold: float = 0.5) -> bool:
    """Greedy answers of builtin:tiny-sorter hold on average > threshold of the prompt's letters."""
    from collections import Counter

    from engine.builtin import builtin_model_path
    from engine.models import load_base
    from engine.rewards import prompt_letters
    from engine.rollout import decode_completion, generate

    model, tok, _ = load_base(str(builtin_model_path()))
    lines = (builtin_dir() / "data" / "sort_prompts_eval.jsonl").read_text().splitlines()[:32]
    prompts = [json.loads(line)["prompt"] for line in lines]
    out = generate(model, [tok.encode(p) for p in prompts], max_new_tokens=16, eos_ids={tok.eos_token_id}, temperature=0.0)
    shares = []
    for p, ids in zip(prompts, out.completion_ids, strict=True):
        want, got = prompt_letters(p), decode_completion(tok, ids, {tok.eos_token_id}).split()
        shares.append(sum((Counter(want) & Counter(got)).values()) / max(len(want), len(got), 1))
    return sum(shares) / len(shares) > threshold


def reward_quarters(run_dir) -> tuple[float, float]:
    rewards = [r["reward"] for r in metrics_rows(run_dir) if "loss" in r]
    q = max(len(rewards) // 4, 1)
    return sum(rewards[:q]) / q, sum(rewards[-q:]) / q


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "steps"), [("tiny-grpo", 40), ("tiny-ppo", 30)])
def test_tiny_rl_preset_raises_its_reward(tmp_path, preset, steps):
    if not base_copies_letters():
        pytest.xfail("builtin:tiny-sorter does not answer with the prompt's letters yet, so sorted_letters has nothing to order")
    cfg = load_preset(preset, [f"train.max_steps={steps}", "train.eval_every=0", "train.save_every=0"])
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    first, last = reward_quarters(tmp_path / "run")
    assert last > first + 0.02, (first, last)
