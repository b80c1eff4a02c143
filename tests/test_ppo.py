"""PPO end to end on the tiny model: gradients reach the policy and the value head, TRL metrics,
samples, a reward model loaded by path, and resume of the KL controller."""

from __future__ import annotations

import json
import math

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from engine.builtin import builtin_model_path
from engine.models import load_base
from engine.presets import load_preset
from engine.run import Run, resume_run
from engine.value_head import ScalarHead
from tests.helpers import metrics_rows, quick_overrides

PPO_KEYS = (
    "objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward", "objective/non_score_reward",
    "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "val/ratio",
)


def ppo_overrides(tmp_path, steps=1, **extra):
    base = quick_overrides(tmp_path, steps=steps, **extra)
    prompts = tmp_path / "prompts.jsonl"
    from engine.presets import builtin_dir

    prompts.write_text("".join((builtin_dir() / "data" / "sort_prompts.jsonl").read_text().splitlines(keepends=True)[:32]))
    base = [o for o in base if not o.startswith(("data.train=", "data.eval="))]
    return base + [f"data.train={prompts}", "data.eval=", "generation.max_new_tokens=8"]


def changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if not mx.array_equal(before[k], after[k]).item()]


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_one_ppo_step_moves_the_policy_and_the_value_head(tmp_path, value_model):
    cfg = load_preset("tiny-ppo", ppo_overrides(tmp_path, steps=1, ppo__value_model=value_model, ppo__ppo_epochs=1, ppo__num_minibatches=1))
    run = Run(cfg, out_dir=tmp_path / "run")
    assert run.run()["status"] == "completed"
    base, _, _ = load_base(str(builtin_model_path()))
    before = dict(tree_flatten(base.parameters()))
    after = dict(tree_flatten(run.ctx.model.parameters()))
    moved = changed(before, after)
    assert any("layers.0." in k for k in moved) and any("layers.1." in k for k in moved), "the policy got gradients"
    head = run.algorithm.module.value_head
    fresh = ScalarHead(head.weight.shape[1], seed=cfg.train.seed + 1)
    assert not mx.array_equal(head.weight, fresh.weight).item(), "the value head got gradients"
    extra = mx.load(str(run.directory.latest_checkpoint()[1] / "extra.safetensors"))
    assert mx.array_equal(extra["value_head.weight"], head.weight).item()
    if value_model == "separate":
        vm = dict(tree_flatten(run.algorithm.module.value_lm.parameters()))
        assert changed(before, vm), "the separate value model got gradients"
        assert any(k.startswith("value_model.") for k in extra)
        # the value loss must not have touched the policy through a shared trunk:
        # the separate model and the policy moved differently
        assert any(not mx.array_equal(vm[k], after[k]).item() for k in moved)


def test_ppo_metrics_samples_and_kl_controller_resume(tmp_path):
    cfg = load_preset("tiny-ppo", ppo_overrides(tmp_path, steps=2, ppo__adaptive_kl="true", ppo__target_kl=0.01,
                                                  ppo__kl_horizon=10, train__save_every=1))
    run = Run(cfg, out_dir=tmp_path / "run")
    assert run.run()["status"] == "completed"
    rows = [r for r in metrics_rows(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in PPO_KEYS:
            assert isinstance(r[key], float) and math.isfinite(r[key]), key
        assert r["reward"] == r["objective/scores"] and r["kl"] == r["objective/kl"]
        assert r["objective/rlhf_reward"] == pytest.approx(r["objective/scores"] + r["objective/non_score_reward"])
        assert 0.0 <= r["reward"] <= 1.0  # sorted_letters scores lie in [0, 1]
    assert rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollout comes from the reference
    # the adaptive controller: step 2's coefficient follows the update from step 1's KL
    kl1 = rows[0]["objective/kl"]
    err = min(max(kl1 / 0.01 - 1, -0.2), 0.2)
    assert rows[0]["kl_coef"] == cfg.ppo.kl_coef
    assert rows[1]["kl_coef"] == pytest.approx(cfg.ppo.kl_coef * (1 + err * cfg.train.batch_size / 10))
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and {"prompt", "completion", "score", "advantage", "step"} <= set(samples[0])
    assert samples[0]["prompt"].startswith("sort:")
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    saved_coef = state["algorithm"]["kl_coef"]
    resumed = resume_run(tmp_path / "run", ["train.max_steps=3"])
    resumed.run()
    assert resumed.algorithm.kl_ctl.value != saved_coef  # restored, then updated once more
    last = [r for r in metrics_rows(tmp_path / "run") if "loss" in r][-1]
    assert last["step"] == 3 and last["kl_coef"] == pytest.approx(saved_coef)


def test_ppo_scores_with_a_trained_reward_model(tmp_path):
    rm_cfg = load_preset("tiny-reward", quick_overrides(tmp_path, steps=2))
    assert Run(rm_cfg, out_dir=tmp_path / "rm").run()["status"] == "completed"
    cfg = load_preset("tiny-ppo", ppo_overrides(tmp_path, steps=1, ppo__reward_model=str(tmp_path / "rm")))
    run = Run(cfg, out_dir=tmp_path / "ppo")
    logs = []
    run.subscribe(lambda e: logs.append(getattr(e, "text", "")))
    assert run.run()["status"] == "completed"
    assert any("reward model" in t for t in logs)
    row = [r for r in metrics_rows(tmp_path / "ppo") if "loss" in r][0]
    samples = [json.loads(line) for line in (tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()]
    # scores come from the reward model: recompute one sample's score with it
    from engine.reward_model import load_reward_model

    rm, tok, _ = load_reward_model(tmp_path / "rm")
    s = samples[0]
    prompt, answer = list(tok.encode(s["prompt"])), list(tok.encode(s["completion"], add_special_tokens=False))
    # the rollout either ended with EOS or was cut at max_new_tokens
    candidates = [rm.score_rows([(prompt, answer + [tok.eos_token_id])]).item()]
    if answer:
        candidates.append(rm.score_rows([(prompt, answer)]).item())
    assert any(c == pytest.approx(s["score"], abs=1e-4) for c in candidates)
    assert math.isfinite(row["objective/scores"])


def test_a_bad_reward_function_name_is_one_clear_error(tmp_path):
    cfg = load_preset("tiny-ppo", ppo_overrides(tmp_path, steps=1, ppo__reward_function="nope"))
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    assert summary["status"] == "failed"
    assert "ppo.reward_function" in summary["error"] and "sorted_letters" in summary["error"]
