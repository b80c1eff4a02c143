"""ORPO, SimPO and CPO: losses and metrics against the papers' formulas (written here in
NumPy), gradients that reach every weight, and the built-in presets running."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from engine.algorithms.orpo import orpo_terms
from engine.algorithms.simpo import simpo_terms
from engine.presets import load_preset
from engine.run import Run
from tests.helpers import metrics_rows, quick_overrides


def sample_sums(seed: int, n: int = 7) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    nc = rng.integers(1, 12, n).astype(np.float64)
    nr = rng.integers(1, 12, n).astype(np.float64)
    sc = -nc * rng.uniform(0.05, 3.0, n)  # mean per-token log-prob between -3 and -0.05
    sr = -nr * rng.uniform(0.05, 3.0, n)
    return sc, sr, nc, nr


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.log1p(np.exp(-x))


def as_mx(*arrays: np.ndarray) -> list[mx.array]:
    return [mx.array(a.astype(np.float32)) for a in arrays]


def close(got: mx.array, want: float) -> bool:
    return float(got.item()) == pytest.approx(want, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_orpo_loss_and_metrics_match_the_paper(seed):
    sc, sr, nc, nr = sample_sums(seed)
    beta = 0.25
    loss, m = orpo_terms(*as_mx(sc, sr, nc, nr), beta)
    ac, ar = sc / nc, sr / nr
    # odds(y) = p / (1 - p) with p the mean per-token likelihood exp(a)
    odds_c, odds_r = np.exp(ac) / (1 - np.exp(ac)), np.exp(ar) / (1 - np.exp(ar))
    log_or = np.log(odds_c / odds_r)
    nll = -sc.sum() / nc.sum()
    assert close(loss, nll - beta * np.mean(log_sigmoid(log_or)))
    assert close(m["nll_loss"], nll)
    assert close(m["log_odds_chosen"], log_or.mean())
    assert close(m["log_odds_ratio"], np.mean(log_sigmoid(log_or)))
    assert close(m["rewards/chosen"], beta * ac.mean()) and close(m["rewards/rejected"], beta * ar.mean())
    assert close(m["rewards/margins"], beta * (ac - ar).mean())
    assert close(m["rewards/accuracies"], float(np.mean(ac > ar)))
    assert close(m["logps/chosen"], ac.mean()) and close(m["logps/rejected"], ar.mean())


def test_orpo_stays_finite_when_an_answer_is_certain():
    loss, m = orpo_terms(mx.array([0.0, -1e-9]), mx.array([-5.0, -80.0]), mx.array([3.0, 3.0]), mx.array([3.0, 40.0]), 0.1)
    assert math.isfinite(float(loss.item())) and all(math.isfinite(float(v.item())) for v in m.values())


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("loss_type", ["simpo", "cpo"])
def test_simpo_and_cpo_match_their_formulas(seed, loss_type):
    sc, sr, nc, nr = sample_sums(seed)
    beta, gamma, alpha, ls = (2.0, 0.5, 0.3, 0.1) if loss_type == "simpo" else (0.1, 0.5, 1.0, 0.0)
    loss, m = simpo_terms(*as_mx(sc, sr, nc, nr), loss_type=loss_type, beta=beta, gamma=gamma, cpo_alpha=alpha, label_smoothing=ls)
    if loss_type == "simpo":  # SimPO: beta/|y| log pi(y) ranked with a margin gamma
        c, r = sc / nc, sr / nr
        z = beta * c - beta * r - gamma
    else:  # CPO: summed log-probs, no margin
        c, r = sc, sr
        z = beta * (c - r)
    per_pair = -(1 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z)
    nll = -sc.sum() / nc.sum()
    assert close(loss, per_pair.mean() + alpha * nll)
    assert close(m["nll_loss"], nll)
    assert close(m["rewards/chosen"], beta * c.mean()) and close(m["rewards/rejected"], beta * r.mean())
    assert close(m["rewards/margins"], beta * (c - r).mean())
    assert close(m["rewards/accuracies"], float(np.mean(c > r)))


@pytest.mark.parametrize(("preset", "extra"), [("tiny-orpo", {}), ("tiny-simpo", {}), ("tiny-simpo", {"simpo__loss_type": "cpo", "simpo__beta": 0.1, "simpo__cpo_alpha": 1.0})])
def test_one_step_moves_every_weight(tmp_path, preset, extra):
    """The model runs inside the differentiated loss: a full fine-tune changes every weight."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load

    from engine.builtin import builtin_model_path

    cfg = load_preset(preset, quick_overrides(tmp_path, steps=1, model__adapter="full", train__eval_on_start="false", **extra))
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    base, _ = load(str(builtin_model_path()))
    before = dict(tree_flatten(base.parameters()))
    after = mx.load(str(tmp_path / "run" / "adapters.safetensors"))
    unchanged = [k for k in before if mx.array_equal(before[k], after[k]).item()]
    assert not unchanged, f"no gradient reached {unchanged[:3]}"


@pytest.mark.parametrize("preset", ["tiny-orpo", "tiny-simpo"])
def test_preset_runs_and_writes_trl_metrics_and_eval_accuracy(tmp_path, preset):
    cfg = load_preset(preset, quick_overrides(tmp_path, steps=3, train__eval_every=3))
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    assert summary["status"] == "completed" and summary["steps"] == 3
    rows = metrics_rows(tmp_path / "run")
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/rewards/accuracies" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    names = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "nll_loss"]
    if preset == "tiny-orpo":
        names += ["log_odds_ratio", "log_odds_chosen"]
    for r in train:
        assert r["kl"] is None and r["reward"] == r["rewards/margins"]
        assert all(math.isfinite(r[k]) for k in ["loss", *names])
    assert [r["step"] for r in evals] == [0, 3]
    # 32 eval pairs: the share is a multiple of 1/32
    assert all(0 <= r["eval/rewards/accuracies"] <= 1 and (r["eval/rewards/accuracies"] * 32) % 1 < 1e-6 for r in evals)
