"""eval/task_score: the share of held-out prompts answered exactly right by greedy generation.

Every generating algorithm logs it (at step 0 for the starting model, then at each eval);
the numbers are checked against greedy answers generated one prompt at a time.
"""

from __future__ import annotations

import json

import pytest

from engine.errors import ConfigError
from engine.presets import builtin_dir, load_preset
from engine.rewards import get_reward
from engine.run import Run
from engine.task_eval import TaskPrompt, TaskScorer, distinct
from tests.helpers import metrics_rows


def test_exact_sort_wants_the_sorted_letters_and_nothing_else():
    fn = get_reward("exact_sort").fn
    prompts = ["sort: q c m f\n"] * 6
    answers = ["c f m q", "c f m q ", "c  f m q", "c f m", "q c m f", "cfmq"]
    assert fn(prompts, answers, [{}] * 6) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_a_right_answer_without_eos_scores_zero():
    scorer = TaskScorer(get_reward("exact_sort"))
    prompts = ["sort: b a\n", "sort: b a\n", "sort: d c e\n", "sort: d c e\n"]
    answers = ["a b", "a b", "c d e", "e d c"]
    finished = [True, False, True, True]
    assert scorer.correct(prompts, answers, finished, [{}] * 4) == [1.0, 0.0, 1.0, 0.0]
    assert scorer.score(prompts, answers, finished, [{}] * 4) == pytest.approx(2 / 4)


def test_each_prompt_counts_once():
    rows = [TaskPrompt((1, 2), "a"), TaskPrompt((1, 2), "a"), TaskPrompt((3,), "b")]
    assert [p.text for p in distinct(rows)] == ["a", "b"]


def test_an_unknown_task_reward_is_one_line_naming_the_key():
    cfg = load_preset("tiny-sft", ["data.task_reward=no_such_reward"])
    with pytest.raises(ConfigError, match="data.task_reward = 'no_such_reward' is not a registered reward function"):
        TaskScorer.from_config(cfg)


def greedy_exact_share(prompts: list[str]) -> float:
    """Greedy answers of the built-in base model, one prompt at a time, compared by hand."""
    from engine.builtin import builtin_model_path
    from engine.models import load_base
    from engine.rollout import generate_one_by_one

    model, tok, _ = load_base(str(builtin_model_path()))
    eos = tok.eos_token_id
    right = 0
    for p in prompts:
        out = generate_one_by_one(model, [tok.encode(p)], max_new_tokens=16, eos_ids={eos}, temperature=0.0)
        ids = out.completion_ids[0]
        letters = p.split("sort:", 1)[1].split()
        want = " ".join(sorted(letters))
        right += bool(ids) and ids[-1] == eos and tok.decode(ids[:-1]) == want
    return right / len(prompts)


@pytest.mark.parametrize("preset", ["tiny-sft", "tiny-dpo", "tiny-grpo", "tiny-ppo"])
def test_every_algorithm_logs_task_score_from_step_0(tmp_path, preset):
    n = 16
    sets = ["train.max_steps=1", "train.eval_every=0", "train.save_every=0", f"data.max_eval_examples={n}", "generation.max_new_tokens=16"]
    if preset in ("tiny-grpo", "tiny-ppo"):
        sets += ["train.batch_size=4", "ppo.num_minibatches=1", "grpo.num_generations=2"]
    cfg = load_preset(preset, sets)
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    evals = [r for r in metrics_rows(tmp_path / "run") if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in evals] == [0, 1]
    assert all(0.0 <= r["eval/task_score"] <= 1.0 for r in evals)
    # step 0 is the starting model: the same for every algorithm, and what greedy answers give
    rows = [json.loads(line) for line in (builtin_dir() / cfg.data.eval).read_text().splitlines()[:n]]
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    assert evals[0]["eval/task_score"] == pytest.approx(greedy_exact_share(prompts))
    # the run history's eval column shows it
    from engine.runs_index import read_run

    assert read_run(tmp_path / "run").headline_eval() == ("eval/task_score", pytest.approx(evals[-1]["eval/task_score"]))


def test_the_monitor_headlines_the_task_score_and_its_change_since_step_0():
    from engine import events as ev
    from rlhf_tui.monitoring import RunState

    state = RunState()
    state.apply(ev.EvalMetrics(0, {"step": 0, "eval/rewards/accuracies": 0.0, "eval/task_score": 0.15}))
    state.apply(ev.EvalMetrics(20, {"step": 20, "eval/rewards/accuracies": 0.9, "eval/task_score": 0.92}))
    assert state.headline_eval() == ("eval/task_score", 0.92)
    assert state.eval_history["eval/task_score"] == [0.15, 0.92]


def test_the_reward_model_has_no_task_score(tmp_path):
    cfg = load_preset("tiny-reward", ["train.max_steps=1", "train.save_every=0", "data.max_eval_examples=8", "data.task_reward=exact_sort"])
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    evals = [r for r in metrics_rows(tmp_path / "run") if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in evals] == [0, 1] and not any("eval/task_score" in r for r in evals)
