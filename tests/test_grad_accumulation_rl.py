"""train.grad_accumulation_steps for KTO, GRPO, RLOO and PPO: the accumulated update equals
the whole batch's (same seed, so the same rollouts), and an accumulating run trains and logs.

Plain SGD makes the update ``lr * gradient``, so equal weights after the step mean equal
gradients. The runs differ only in how the batch is cut: float32 sums taken in another order
(and rows padded to another width) differ by ~1e-6 of a value, two updates compound that to
~1e-5; and the change is read back as ``w1 - w0`` from float32 weights, which rounds it by up
to one ulp of the weight (~1.2e-7 |w|). A micro-batch weighted wrongly (a mean of micro-batch
means, a per-micro-batch KL estimate or token count) moves the update by 10% or more. Hence:
1e-3 of the tensor's largest change plus 4 ulps of its largest weight.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from engine.presets import builtin_dir, load_preset
from engine.run import Run
from tests.helpers import metrics_rows, quick_overrides

COMMON = ["train.optimizer=sgd", "train.compile=false", "data.task_reward=", "train.eval_on_start=false", "data.eval=",
          "train.eval_every=0", "train.save_every=0", "train.max_grad_norm=0"]


def prompt_data(tmp_path) -> list[str]:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join((builtin_dir() / "data" / "sort_prompts.jsonl").read_text().splitlines(keepends=True)[:16]))
    return [f"data.train={prompts}", "generation.max_new_tokens=8"]


def run_once(tmp_path, preset: str, name: str, overrides: list[str]) -> tuple[dict[str, mx.array], list[dict]]:
    cfg = load_preset(preset, [*overrides, *COMMON])
    run = Run(cfg, out_dir=tmp_path / name)
    summary = run.run()
    assert summary["status"] == "completed", summary
    weights = {k: mx.array(v) for k, v in tree_flatten(run.ctx.trainable.trainable_parameters())}
    return weights, [r for r in metrics_rows(tmp_path / name) if "loss" in r]


def initial_weights(tmp_path, preset: str, overrides: list[str]) -> dict[str, mx.array]:
    from engine.models import load_policy

    cfg = load_preset(preset, [*overrides, *COMMON])
    mx.random.seed(cfg.train.seed)  # as the run seeds before it loads
    return dict(tree_flatten(load_policy(cfg).model.trainable_parameters()))


def assert_same_update(w0: dict, whole: dict, split: dict) -> None:
    eps = float(np.finfo(np.float32).eps)
    moved = 0
    for k in whole:
        d_whole, d_split = whole[k] - w0[k], split[k] - w0[k]
        scale = float(mx.abs(d_whole).max().item())
        if scale == 0:
            continue
        moved += 1
        ulps = 4 * eps * float(mx.abs(whole[k]).max().item())
        assert float(mx.abs(d_whole - d_split).max().item()) <= 1e-3 * scale + ulps, k
    assert moved > len(whole) // 2, "the step must move the weights for the comparison to mean anything"


def assert_same_metrics(a: list[dict], b: list[dict], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in keys:
            if ra.get(key) is None:
                assert rb.get(key) is None, key
                continue
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key)


# ---------------------------------------------------------------- KTO


def test_kto_accumulated_update_equals_the_whole_batch(tmp_path):
    # two steps: the first step's policy is the reference (KL estimate 0); the second's KL is
    # estimated over the whole batch in both runs, so the updates still agree
    over = [*quick_overrides(tmp_path, steps=2), "train.batch_size=6", "train.learning_rate=1.0"]
    w0 = initial_weights(tmp_path, "tiny-kto", over)
    whole, a = run_once(tmp_path, "tiny-kto", "whole", over)
    split, b = run_once(tmp_path, "tiny-kto", "split", [*over, "train.grad_accumulation_steps=4"])  # 6 rows: 2+2+1+1
    assert a[1]["kl"] > 0, "step 2 must have a KL estimate for the whole-batch check to test it"
    assert_same_update(w0, whole, split)
    assert_same_metrics(a, b, ("loss", "grad_norm", "kl", "reward", "rewards/chosen", "rewards/rejected",
                               "logps/chosen", "logps/rejected", "count/chosen", "count/rejected"))
    assert b[0]["count/chosen"] + b[0]["count/rejected"] == 6


# ---------------------------------------------------------------- GRPO / RLOO


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_accumulated_update_equals_the_whole_batch(tmp_path, loss_type):
    # 2 prompts x 4 completions cut 3 + 3 + 2 (across a group boundary); two passes over the
    # rollouts (grpo.num_iterations = 2) so the second uses old log-probs, clipping and the KL
    over = [*prompt_data(tmp_path), "train.max_steps=1", "train.batch_size=2", "grpo.num_generations=4", "grpo.num_iterations=2",
            "grpo.beta=0.1", f"grpo.loss_type={loss_type}", "train.learning_rate=0.02"]
    w0 = initial_weights(tmp_path, "tiny-grpo", over)
    whole, a = run_once(tmp_path, "tiny-grpo", "whole", over)
    split, b = run_once(tmp_path, "tiny-grpo", "split", [*over, "train.grad_accumulation_steps=3"])
    assert b[0]["completions/mean_length"] == a[0]["completions/mean_length"] and b[0]["reward"] == a[0]["reward"]  # same rollouts
    assert_same_update(w0, whole, split)
    assert_same_metrics(a, b, ("loss", "grad_norm", "kl", "entropy", "clip_ratio/region_mean", "reward_std"))


def test_rloo_accumulated_update_equals_the_whole_batch(tmp_path):
    # step 2 has a KL to the reference in its rewards; 2 prompts x 4 completions cut 3 + 3 + 2
    over = [*prompt_data(tmp_path), "train.max_steps=2", "train.batch_size=2", "rloo.num_generations=4", "rloo.num_iterations=2",
            "rloo.beta=0.1", "train.learning_rate=0.5"]
    w0 = initial_weights(tmp_path, "tiny-rloo", over)
    whole, a = run_once(tmp_path, "tiny-rloo", "whole", over)
    split, b = run_once(tmp_path, "tiny-rloo", "split", [*over, "train.grad_accumulation_steps=3"])
    for ra, rb in zip(a, b, strict=True):  # same rollouts
        assert rb["completions/mean_length"] == ra["completions/mean_length"] and rb["reward"] == ra["reward"]
    assert a[1]["kl"] != 0
    assert_same_update(w0, whole, split)
    assert_same_metrics(a, b, ("loss", "grad_norm", "kl", "entropy", "clip_ratio/region_mean", "reward_std"))


def test_ppo_accumulated_update_equals_the_whole_minibatch(tmp_path):
    # 4 rollouts, 2 minibatches of 2, each update summed from 2 micro-batches of 1 rollout
    # weighted by their tokens; two PPO epochs: four updates, the later ones with ratios != 1
    over = [*prompt_data(tmp_path), "train.max_steps=1", "train.batch_size=4", "train.learning_rate=0.05"]
    w0 = initial_weights(tmp_path, "tiny-ppo", over)
    whole, a = run_once(tmp_path, "tiny-ppo", "whole", over)
    split, b = run_once(tmp_path, "tiny-ppo", "split", [*over, "train.grad_accumulation_steps=2"])
    assert b[0]["completions/mean_length"] == a[0]["completions/mean_length"] and b[0]["reward"] == a[0]["reward"]  # same rollouts
    policy = {k: k.removeprefix("policy.") for k in whole if k.startswith("policy.")}  # PolicyWithValue's policy part
    assert_same_update(w0, {policy[k]: whole[k] for k in policy}, {policy[k]: split[k] for k in policy})
    assert_same_metrics(a, b, ("loss", "grad_norm", "loss/policy_avg", "loss/value_avg", "policy/clipfrac_avg", "val/ratio", "policy/entropy_avg"))


# ---------------------------------------------------------------- a short run logs as usual


@pytest.mark.parametrize("preset", ["tiny-kto", "tiny-grpo", "tiny-rloo", "tiny-ppo"])
def test_a_short_accumulating_run_trains_and_logs(tmp_path, preset):
    over = [*quick_overrides(tmp_path, steps=2), "train.batch_size=4"]
    if preset != "tiny-kto":
        over = [o for o in over if not o.startswith("data.train=")] + prompt_data(tmp_path)
        over += ["train.batch_size=4"] if preset == "tiny-ppo" else [f"{preset[5:]}.num_generations=4", "train.batch_size=2"]
    cfg = load_preset(preset, [*over, "train.grad_accumulation_steps=2", "train.eval_on_start=false", "data.max_eval_examples=4"])
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    train = [r for r in metrics_rows(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        for key in ("loss", "grad_norm", "learning_rate", "reward"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), key
