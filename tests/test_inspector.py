"""The pair inspector: search, sort, detail diff, flag-and-save, scoring in the UI, snapshots.

Data files are written by the tests (a handful of sorting pairs). Scoring uses the tiny
built-in model: its base weights, and one two-step DPO run for the checkpoint flow.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest

from engine import scoring
from engine.presets import load_preset
from engine.scoring import PairScore
from rlhf_tui.app import make_app
from rlhf_tui.screens.inspector import (
    InspectorScreen,
    PairRow,
    PairsScored,
    PairTable,
    ScoreSourceScreen,
)
from rlhf_tui.widgets.pair_view import CHOSEN_STYLE, REJECTED_STYLE, diff_texts
from tests import helpers
from tests.helpers import quick_overrides, run_pilot, write_jsonl

SIZE = (140, 42)
FIXED = Path("/tmp/rlhf-tui-inspector-snapshots")
PAIRS = [
    {"prompt": "sort: s z y c\n", "chosen": "c s y z", "rejected": "s z y c"},
    {"prompt": "sort: m n t\n", "chosen": "m n t", "rejected": "t n m"},
    {"prompt": "sort: b a\n", "chosen": "a b", "rejected": "b a"},
    {"prompt": "sort: q k e\n", "chosen": "e k q", "rejected": "e q k"},
    {"prompt": "sort: y o p u m g\n", "chosen": "g m o p u y", "rejected": "y o p u m g"},
    {"prompt": "sort: d c\n", "chosen": "c d", "rejected": "d c"},
]


def pairs_file(folder: Path, rows: list[dict] = PAIRS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_jsonl(folder / "pairs.jsonl", rows)


wait_until = partial(helpers.wait_until, timeout=600.0)


def shown_indices(screen: InspectorScreen) -> list[int]:
    table = screen.query_one("#pairs")
    return [int(table.coordinate_to_cell_key((i, 0)).row_key.value) for i in range(table.row_count)]


# ---------------------------------------------------------------- pure parts


def test_table_model_filters_and_sorts_with_unscored_rows_last():
    rows = [PairRow(i, i + 1, f"f:{i + 1}", p["prompt"], p["chosen"], p["rejected"]) for i, p in enumerate(PAIRS)]
    rows[0].verdict, rows[1].verdict, rows[2].verdict = 0.5, -1.0, 0.0
    m = PairTable(rows)
    m.query = "Q K"  # case-insensitive, any of prompt / chosen / rejected
    assert [r.index for r in m.visible()] == [3]
    m.query = ""
    m.sort_by("verdict")
    assert [r.index for r in m.visible()] == [1, 2, 0, 3, 4, 5]  # most wrong first, unscored last
    m.sort_by("verdict")  # same column again: reversed
    assert m.reverse and [r.index for r in m.visible()][:3] == [0, 2, 1]
    m.sort_by("chosen", reverse=False)
    assert [r.chosen for r in m.visible()] == sorted(p["chosen"] for p in PAIRS)


def test_detail_diff_highlights_only_what_differs():
    left, right = diff_texts("e k q", "e q k")
    assert left.plain == "e k q" and right.plain == "e q k"
    marked_left = {left.plain[s.start:s.end] for s in left.spans if s.style == CHOSEN_STYLE}
    marked_right = {right.plain[s.start:s.end] for s in right.spans if s.style == REJECTED_STYLE}
    assert "e" not in marked_left and "e" not in marked_right  # the shared first word is plain
    assert marked_left and marked_right
    same_l, same_r = diff_texts("a b", "a b")
    assert not same_l.spans and not same_r.spans


# ---------------------------------------------------------------- Pilot


def test_search_sort_and_detail(tmp_path):
    data = pairs_file(tmp_path)
    screen = InspectorScreen(data=str(data), count_tokens=False)
    app = make_app(initial_screen=screen)

    async def script(pilot):
        assert shown_indices(screen) == [0, 1, 2, 3, 4, 5]
        await pilot.press("slash", *"t n")
        await pilot.pause()
        assert shown_indices(screen) == [1]  # "t n m" is pair 2's rejected answer
        assert "1 match" in str(screen.query_one("#inspector-summary").render())
        await pilot.press("enter")  # back to the table, filter kept
        await pilot.pause()
        assert shown_indices(screen) == [1]
        await pilot.press("escape")  # the search box is hidden only when it is shown; escape clears
        await pilot.pause()
        await pilot.press("slash", "escape")
        await pilot.pause()
        assert shown_indices(screen) == [0, 1, 2, 3, 4, 5]
        await pilot.press("s")  # sort by the prompt
        await pilot.pause()
        assert screen.table_model.sort_key == "prompt"
        assert shown_indices(screen) == [2, 5, 1, 3, 0, 4]
        await pilot.press("r")
        await pilot.pause()
        assert shown_indices(screen) == [4, 0, 3, 1, 5, 2]
        # the pair under the cursor stays under it when the order changes
        assert screen.query_one("#pairs").cursor_row == 3
        assert "m n t" in str(screen.query_one("#pair-chosen").render())
        await pilot.press("up", "up", "up")
        await pilot.pause()
        # the detail panel shows the pair under the cursor, in full
        assert "g m o p u y" in str(screen.query_one("#pair-chosen").render())
        assert "y o p u m g" in str(screen.query_one("#pair-rejected").render())

    run_pilot(app, script)


def test_clicking_a_header_sorts_by_that_column(tmp_path):
    data = pairs_file(tmp_path)
    screen = InspectorScreen(data=str(data), count_tokens=False)
    app = make_app(initial_screen=screen)

    async def script(pilot):
        table = screen.query_one("#pairs")
        # the Chosen header: x offset of its column inside the table
        x = sum(table.columns[k].get_render_width(table) for k in ("index", "prompt")) + 2
        await pilot.click("#pairs", offset=(x + 1, 1))
        await pilot.pause()
        assert screen.table_model.sort_key == "chosen"
        assert [screen.table_model.rows[i].chosen for i in shown_indices(screen)] == sorted(p["chosen"] for p in PAIRS)

    run_pilot(app, script)


def test_flag_and_save_a_cleaned_copy(tmp_path):
    data = pairs_file(tmp_path)
    original = data.read_text()
    screen = InspectorScreen(data=str(data), count_tokens=False)
    app = make_app(initial_screen=screen)

    async def script(pilot):
        await pilot.press("f")  # flags pair 1, the cursor moves to pair 2
        await pilot.press("down", "f")  # flags pair 3
        await pilot.pause()
        assert [r.index for r in screen.table_model.flagged] == [0, 2]
        await pilot.press("w")
        await pilot.pause()
        await pilot.press("w")  # a second save never overwrites the first
        await pilot.pause()

    run_pilot(app, script)
    assert data.read_text() == original
    first, second = tmp_path / "pairs.cleaned.jsonl", tmp_path / "pairs.cleaned-2.jsonl"
    kept = [json.loads(x) for x in first.read_text().splitlines()]
    assert kept == [PAIRS[1], PAIRS[3], PAIRS[4], PAIRS[5]]
    assert second.read_text() == first.read_text()
    assert screen.saved_paths == [first, second]


def test_base_model_scores_fill_the_table_and_m_puts_wrong_pairs_first(tmp_path):
    data = pairs_file(tmp_path)
    screen = InspectorScreen(load_preset("tiny-dpo"), data=str(data))
    app = make_app(initial_screen=screen, runs_root=str(tmp_path / "runs"))

    async def script(pilot):
        await wait_until(pilot, lambda: screen.tokens_ready, what="token lengths")
        row = screen.table_model.rows[4]
        # the built-in character tokenizer: one token per character, EOS after each answer
        assert (row.chosen_tokens, row.rejected_tokens) == (len("g m o p u y") + 1, len("y o p u m g") + 1)
        await pilot.press("c")
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, ScoreSourceScreen)
        assert [s.kind for s in picker.sources] == ["base", "ask"]  # no runs yet
        await pilot.press("enter")
        await wait_until(pilot, lambda: not screen.scoring and screen.table_model.scored, what="scores")
        base = scoring.base_scorer(load_preset("tiny-dpo"))
        expected = scoring.score(base, scoring.tokenize_pairs(base, data))
        for r, e in zip(screen.table_model.rows, expected, strict=True):
            assert r.score is not None and r.score.policy_chosen == pytest.approx(e.policy_chosen, abs=1e-4)
            assert r.prefers == (e.policy_chosen > e.policy_rejected)
        await pilot.press("m")
        await pilot.pause()
        order = shown_indices(screen)
        gaps = [screen.table_model.rows[i].verdict for i in order]
        assert gaps == sorted(gaps)
        wrong = sum(1 for r in screen.table_model.rows if not r.prefers)
        assert f"{wrong} wrong" in str(screen.query_one("#inspector-summary").render())
        await pilot.press("v")  # only the pairs judged wrong
        await pilot.pause()
        assert sorted(shown_indices(screen)) == [r.index for r in screen.table_model.rows if not r.prefers]
        await pilot.press("v")
        await pilot.pause()
        assert len(shown_indices(screen)) == len(PAIRS)

    run_pilot(app, script)


def test_score_with_a_run_checkpoint_picked_from_the_runs_folder(tmp_path):
    from engine.run import Run

    cfg = load_preset("tiny-dpo", quick_overrides(tmp_path, steps=2, data__eval="", train__learning_rate=2e-3))
    run_dir = tmp_path / "runs" / "tiny-dpo-ck"
    Run(cfg, out_dir=run_dir).run()
    data = pairs_file(tmp_path)
    screen = InspectorScreen(cfg, data=str(data), count_tokens=False)
    app = make_app(initial_screen=screen, runs_root=str(tmp_path / "runs"))

    async def script(pilot):
        await pilot.press("c")
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, ScoreSourceScreen)
        assert picker.sources[0].kind == "checkpoint" and "tiny-dpo-ck" in picker.sources[0].label
        await pilot.press("enter")
        await wait_until(pilot, lambda: not screen.scoring and screen.table_model.scored, what="scores")
        assert "tiny-dpo-ck step 2" in screen.scored_by
        trained = scoring.checkpoint_scorer(run_dir)
        expected = scoring.score(trained, scoring.tokenize_pairs(trained, data))
        for r, e in zip(screen.table_model.rows, expected, strict=True):
            assert r.verdict == pytest.approx(cfg.dpo.beta * ((e.policy_chosen - e.ref_chosen) - (e.policy_rejected - e.ref_rejected)), abs=1e-4)
            assert r.prefers == (r.verdict > 0)

    run_pilot(app, script)


def test_scoring_can_be_stopped(tmp_path):
    screen = InspectorScreen(load_preset("tiny-dpo"), count_tokens=False)  # its 2000 training pairs
    app = make_app(initial_screen=screen, runs_root=str(tmp_path / "runs"))

    async def script(pilot):
        from rlhf_tui.screens.inspector import ScoreSource

        screen.start_scoring(ScoreSource("base", "base"))
        assert screen.scoring
        bar = screen.query_one("#inspector-progress")
        await wait_until(pilot, lambda: bar.total == 2000, what="the first scored batch")
        await pilot.press("x")
        await wait_until(pilot, lambda: not screen.scoring, what="scoring to stop")
        assert not screen.table_model.scored

    run_pilot(app, script)


def test_a_prompt_only_file_gets_one_clear_message(tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "sort: b a\n"}])
    screen = InspectorScreen(data=str(data), count_tokens=False)
    app = make_app(initial_screen=screen)

    async def script(pilot):
        text = str(screen.query_one("#inspector-summary").render())
        assert "prompts.jsonl:1" in text and "rejected" in text

    run_pilot(app, script)


def test_i_on_the_presets_screen_opens_the_inspector_on_its_data(tmp_path):
    app = make_app("tiny-dpo", runs_root=str(tmp_path / "runs"))

    async def script(pilot):
        await pilot.press("i")
        await pilot.pause(0.3)
        screen = app.screen
        assert isinstance(screen, InspectorScreen)
        assert screen.data_path.endswith("sort_train.jsonl") and len(screen.table_model.rows) == 2000
        await pilot.press("e")
        await pilot.pause(0.3)
        assert screen.data_path.endswith("sort_eval.jsonl") and len(screen.table_model.rows) == 200
        for worker in list(app.workers):
            worker.cancel()

    run_pilot(app, script)


# ---------------------------------------------------------------- snapshots


def fixed_scores(rows: list[PairRow]) -> list[PairScore]:
    """Made-up but consistent scores: pairs 2 and 4 are judged wrong."""
    out = []
    for r in rows:
        wrong = r.index in (1, 3)
        pc, pr = (-9.0, -6.5) if wrong else (-4.0, -12.0)
        out.append(PairScore(r.where, r.prompt, r.chosen, r.rejected, pc - 0.1 * r.index, pr, -8.0, -8.0, 0.3))
    return out


def test_inspector_snapshot_unscored(snap_compare):
    shutil.rmtree(FIXED, ignore_errors=True)
    data = pairs_file(FIXED)
    screen = InspectorScreen(data=str(data), count_tokens=False)
    assert snap_compare(make_app(initial_screen=screen), terminal_size=SIZE)


def test_inspector_snapshot_scored_wrong_first_with_a_flag(snap_compare):
    shutil.rmtree(FIXED, ignore_errors=True)
    data = pairs_file(FIXED)
    screen = InspectorScreen(data=str(data), count_tokens=False)

    async def scored(pilot):
        await pilot.pause()
        rows = screen.table_model.rows
        scores = fixed_scores(rows)
        screen.post_message(PairsScored(scores, "policy", "tiny-dpo-ck step 60", [s.margin > 0 for s in scores], [s.margin for s in scores], screen.data_path))
        await pilot.pause()
        await pilot.press("m", "down", "f", "up")
        await pilot.pause()

    assert snap_compare(make_app(initial_screen=screen), terminal_size=SIZE, run_before=scored)


def test_i_on_a_followed_runs_monitor_opens_its_data_with_its_checkpoints_offered_first(tmp_path):
    import tomli_w

    from engine.config import resolved, to_dict
    from rlhf_tui.screens.monitor import MonitorScreen

    data = pairs_file(tmp_path)
    run_dir = tmp_path / "runs" / "tiny-dpo-x"
    for step in (5, 10):
        ck = run_dir / "checkpoints" / f"step-{step:06d}"
        ck.mkdir(parents=True)
        (ck / "trainer_state.json").write_text(json.dumps({"step": step}))
    cfg = load_preset("tiny-dpo", [f"data.train={data}", "data.eval="])
    (run_dir / "config.toml").write_text(tomli_w.dumps(to_dict(resolved(cfg))))
    app = make_app(initial_screen=MonitorScreen(run_dir=str(run_dir)), runs_root=str(tmp_path / "runs"))

    async def script(pilot):
        await pilot.press("i")
        await pilot.pause(0.3)
        screen = app.screen
        assert isinstance(screen, InspectorScreen) and screen.run_dir == str(run_dir)
        assert screen.data_path == str(data) and len(screen.table_model.rows) == len(PAIRS)
        labels = [(s.kind, s.label) for s in screen.score_sources()]
        assert labels[0] == ("checkpoint", "tiny-dpo-x · checkpoint step 10")
        assert labels[1] == ("checkpoint", "tiny-dpo-x · checkpoint step 5")
        assert sum(1 for _, label in labels if "tiny-dpo-x" in label) == 2  # not listed twice
        for worker in list(app.workers):
            worker.cancel()

    run_pilot(app, script)
