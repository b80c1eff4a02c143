"""rlhf-tui chat: the trained model and its base answer the same prompt side by side (Pilot)."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine
from engine.presets import load_preset
from engine.run import Run
from tests.helpers import cli, run_pilot, wait_until

PROMPT = "sort: q c m f"
KEY_NAMES = {" ": "space", ":": "colon"}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("chat")
    cfg = load_preset("tiny-sft", ["model.path=builtin:tiny-sorter", "train.max_steps=10", "train.eval_every=0", "train.save_every=5"])
    run = Run(cfg, out_dir=tmp / "run")
    assert run.run()["status"] == "completed", run.summary.get("error")
    return tmp / "run"


def greedy_answer(model, tokenizer, prompt: str, max_tokens: int) -> str:
    """What mlx-lm itself answers (greedy) to one user turn through the chat template."""
    from mlx_lm import generate

    from engine.side_by_side import own_generation_stream

    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    with own_generation_stream():  # mlx-lm's stream may have been made by another (ended) thread
        return generate(model, tokenizer, ids, max_tokens=max_tokens)


@pytest.mark.slow
def test_typing_a_prompt_fills_both_panes_with_each_models_answer(sft_run):
    from mlx_lm import load

    from rlhf_tui.app import make_app
    from rlhf_tui.screens.chat import ChatScreen

    screen = ChatScreen(str(sft_run), max_tokens=24)
    app = make_app(initial_screen=screen)

    async def script(pilot):
        await wait_until(pilot, lambda: screen.loaded, 120, lambda: str(screen.query_one("#chat-status").render()))
        assert "step 10" in screen.pane("trained").border_title
        await pilot.press(*[KEY_NAMES.get(c, c) for c in PROMPT])
        assert screen.query_one("#chat-input").value == PROMPT
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(screen.finished_sides) == 2 and not screen.generating, 120, "both answers")
        assert set(screen.finished_sides) == {"trained", "base"}
        panes.update(trained=screen.pane("trained"), base=screen.pane("base"))
        shown.update({side: str(p.query_one(".chat-text").render()) for side, p in panes.items()})

    panes: dict = {}
    shown: dict = {}
    run_pilot(app, script)
    trained, base = panes["trained"], panes["base"]
    for side in ("trained", "base"):  # on screen: the prompt, then the answer
        assert PROMPT in shown[side] and panes[side].answer.strip() in shown[side]
    assert [role for role, _ in trained.turns] == ["user", "assistant"] and trained.turns[0][1] == PROMPT
    assert trained.answer.strip() and base.answer.strip()
    model, tok = engine.load_trained(sft_run)
    base_model, base_tok = load(engine.base_model_path(sft_run))
    assert trained.answer == greedy_answer(model, tok, PROMPT, 24)
    assert base.answer == greedy_answer(base_model, base_tok, PROMPT, 24)
    assert "tokens" in trained.note and "tok/s" in base.note


def test_the_history_key_opens_the_chat_and_a_checkpoint_can_be_picked(sft_run):
    from rlhf_tui.app import make_app
    from rlhf_tui.screens.chat import ChatScreen
    from rlhf_tui.screens.history import HistoryScreen

    app = make_app(initial_screen=HistoryScreen(str(sft_run.parent)), runs_root=str(sft_run.parent))

    async def script(pilot):
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen), 10, "the chat screen")
        chat = app.screen
        await wait_until(pilot, lambda: chat.loaded, 120, "the models")
        assert chat.run_dir == str(sft_run)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, HistoryScreen)

    run_pilot(app, script)

    from engine.side_by_side import load_side_by_side

    assert load_side_by_side(sft_run, step=5).label("trained").endswith("step 5")


def test_bad_run_dir_or_step_is_one_line(sft_run, tmp_path):
    out = cli("chat", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "not a run directory" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = cli("chat", str(sft_run), "--step", "7")
    assert out.returncode == 2 and "no checkpoint for step 7" in out.stderr
