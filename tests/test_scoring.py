"""Pair scoring (engine/scoring.py): the inspector's numbers against the engine's own.

One short DPO run on the tiny built-in model is shared by the tests; its checkpoint is
scored and every number is checked against log-probs computed here independently, the
run's cached reference log-probs and its own eval accuracy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import pytest

from engine import scoring
from engine.config import config_from_dict, load_toml
from engine.errors import Cancelled, RunDirError
from engine.presets import load_preset
from engine.run import Run
from tests.helpers import metrics_rows, quick_overrides


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scoring")
    cfg = load_preset("tiny-dpo", quick_overrides(folder, steps=6, train__learning_rate=2e-3))
    run = Run(cfg, out_dir=folder / "run")
    summary = run.run()
    assert summary["status"] == "completed", summary
    return folder / "run"


def _logp_by_hand(model, prompt_ids, answer_ids) -> float:
    """Sum of log p(answer token | everything before it), one sequence at a time, float32."""
    tokens = mx.array([list(prompt_ids) + list(answer_ids)])
    logits = model(tokens[:, :-1]).astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    total = 0.0
    for i in range(len(answer_ids)):
        pos = len(prompt_ids) - 1 + i  # the position that predicts answer token i
        total += float(logp[0, pos, answer_ids[i]].item())
    return total


def test_checkpoint_scores_equal_log_probs_computed_by_hand(dpo_run):
    from mlx_lm import load

    from engine.api import base_model_path

    scorer = scoring.checkpoint_scorer(dpo_run)
    assert scorer.kind == "policy" and "step 6" in scorer.label
    cfg = config_from_dict(load_toml(dpo_run / "config.toml"))
    pairs = scoring.tokenize_pairs(scorer, cfg.data.eval)[:5]
    scores = scoring.score(scorer, pairs, batch_size=2)
    trained, _ = load(base_model_path(dpo_run), adapter_path=str(dpo_run))  # mlx-lm's own loading
    base, _ = load(base_model_path(dpo_run))
    beta = cfg.dpo.beta
    for p, s in zip(pairs, scores, strict=True):
        pc, pr = _logp_by_hand(trained, p.prompt_ids, p.chosen_ids), _logp_by_hand(trained, p.prompt_ids, p.rejected_ids)
        rc, rr = _logp_by_hand(base, p.prompt_ids, p.chosen_ids), _logp_by_hand(base, p.prompt_ids, p.rejected_ids)
        assert s.policy_chosen == pytest.approx(pc, abs=1e-3)
        assert s.policy_rejected == pytest.approx(pr, abs=1e-3)
        assert s.ref_chosen == pytest.approx(rc, abs=1e-3)
        assert s.ref_rejected == pytest.approx(rr, abs=1e-3)
        assert s.margin == pytest.approx(beta * ((pc - rc) - (pr - rr)), abs=1e-3)
        assert scorer.prefers_chosen(s) == (s.margin > 0)
    assert any(abs(s.margin) > 1e-3 for s in scores), "six steps at lr 2e-3 should move the margins"


def test_reference_log_probs_equal_the_runs_cached_ones_and_accuracy_equals_its_eval(dpo_run):
    scorer = scoring.checkpoint_scorer(dpo_run)
    cfg = scorer.config
    assert cfg is not None
    pairs = scoring.tokenize_pairs(scorer, cfg.data.eval)[: cfg.data.max_eval_examples]
    scores = scoring.score(scorer, pairs, batch_size=8)
    # DPO's own reference values, cached in the run directory by pair content and model identity
    from engine.reference_cache import FILE_NAME, model_identity, pair_key

    stored = {r["key"]: (r["chosen"], r["rejected"]) for r in map(json.loads, (dpo_run / FILE_NAME).read_text().splitlines())}
    model_id = model_identity(cfg, {"average": cfg.dpo.loss_type == "ipo"})
    cached = [stored[pair_key(model_id, p.prompt_ids, p.chosen_ids, p.rejected_ids)] for p in pairs]
    for s, (rc, rr) in zip(scores, cached, strict=True):
        assert s.ref_chosen == pytest.approx(rc, abs=1e-3) and s.ref_rejected == pytest.approx(rr, abs=1e-3)
    last_eval = [r for r in metrics_rows(dpo_run) if "eval/rewards/accuracies" in r][-1]
    accuracy = sum(scorer.prefers_chosen(s) for s in scores) / len(scores)
    assert accuracy == pytest.approx(last_eval["eval/rewards/accuracies"], abs=1e-6)
    mean_margin = sum(s.margin for s in scores) / len(scores)
    assert mean_margin == pytest.approx(last_eval["eval/rewards/margins"], abs=1e-3)


def test_base_model_scores_have_zero_margin_and_judge_by_log_probs(dpo_run):
    cfg = load_preset("tiny-dpo")
    scorer = scoring.base_scorer(cfg)
    pairs = scoring.tokenize_pairs(scorer, config_from_dict(load_toml(dpo_run / "config.toml")).data.eval)[:4]
    scores = scoring.score(scorer, pairs)
    for s in scores:
        assert s.margin == 0.0 and s.policy_chosen == s.ref_chosen
        assert scorer.prefers_chosen(s) == (s.policy_chosen > s.policy_rejected)
        assert math.isfinite(s.policy_chosen) and s.policy_chosen < 0


def test_live_weights_score_like_the_checkpoint_they_were_saved_to(dpo_run, tmp_path):
    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=2))
    run = Run(cfg, out_dir=tmp_path / "live")
    run.run()
    live = scoring.live_scorer(run)
    assert "step 2" in live.label
    saved = scoring.checkpoint_scorer(tmp_path / "live")
    pairs = scoring.tokenize_pairs(live, cfg.data.eval)[:3]
    a, b = scoring.score(live, pairs), scoring.score(saved, pairs)
    for x, y in zip(a, b, strict=True):
        assert x.policy_chosen == pytest.approx(y.policy_chosen, abs=1e-5)
        assert x.margin == pytest.approx(y.margin, abs=1e-5)


def test_scoring_reports_progress_and_can_be_cancelled(dpo_run):
    scorer = scoring.checkpoint_scorer(dpo_run)
    pairs = scoring.tokenize_pairs(scorer, scorer.config.data.eval)[:6]
    seen: list[tuple[int, int]] = []
    scoring.score(scorer, pairs, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (12, 12) and seen[0] == (2, 12)  # policy then reference: 2 x 6 pairs
    calls = []
    with pytest.raises(Cancelled):
        scoring.score(scorer, pairs, batch_size=2, progress=lambda d, t: calls.append(d), should_stop=lambda: len(calls) >= 1)
    assert calls == [2]


def test_checkpoint_choice_by_step_and_clear_errors(dpo_run, tmp_path):
    run_dir, ck = scoring.find_checkpoint(dpo_run)
    assert run_dir == dpo_run and ck.name == "step-000006"
    assert scoring.find_checkpoint(ck) == (dpo_run, ck)
    with pytest.raises(RunDirError, match=r"no checkpoint for step 3 \(checkpoints: 6\)"):
        scoring.find_checkpoint(dpo_run, step=3)
    with pytest.raises(RunDirError, match="not a run directory"):
        scoring.find_checkpoint(tmp_path)
    with pytest.raises(RunDirError, match="not found"):
        scoring.find_checkpoint(tmp_path / "nope")


def test_engine_score_pairs_still_works_through_the_public_api(dpo_run):
    import engine

    scores = engine.score_pairs(dpo_run, config_from_dict(load_toml(dpo_run / "config.toml")).data.eval, limit=2)
    assert len(scores) == 2 and isinstance(scores[0], engine.PairScore)
    assert scores[0].margin == pytest.approx(scores[0].beta * ((scores[0].policy_chosen - scores[0].ref_chosen) - (scores[0].policy_rejected - scores[0].ref_rejected)))


def test_a_reward_run_scores_pairs_with_its_reward_model(tmp_path):
    from engine.reward_model import load_reward_model

    cfg = load_preset("tiny-reward", quick_overrides(tmp_path, steps=2, data__eval=""))
    Run(cfg, out_dir=tmp_path / "rm").run()
    scorer = scoring.checkpoint_scorer(tmp_path / "rm")
    assert scorer.kind == "reward" and "reward model" in scorer.label
    pairs = scoring.tokenize_pairs(scorer, cfg.data.train)[:4]
    scores = scoring.score(scorer, pairs, batch_size=3)
    rm, _, _ = load_reward_model(tmp_path / "rm")
    for p, s in zip(pairs, scores, strict=True):
        c = rm.score_rows([(p.prompt_ids, p.chosen_ids)]).tolist()[0]  # one row at a time, no padding
        r = rm.score_rows([(p.prompt_ids, p.rejected_ids)]).tolist()[0]
        assert s.rm_chosen == pytest.approx(c, abs=1e-4) and s.rm_rejected == pytest.approx(r, abs=1e-4)
        assert scorer.prefers_chosen(s) == (s.rm_chosen > s.rm_rejected)
        assert scorer.verdict(s) == pytest.approx(c - r, abs=1e-4)
