"""The inspector's `t`: the pair under the cursor as the model sees it (chat template, special
tokens), the same rendering `rlhf-tui data` prints."""

from __future__ import annotations

from engine.config import config_from_dict
from rlhf_tui.app import make_app
from rlhf_tui.screens.inspector import InspectorScreen, ModelViewScreen
from tests.helpers import run_pilot, wait_until, write_jsonl
from tests.real_formats import write_model


def test_t_shows_the_chatml_rendering_of_an_h4_row(tmp_path):
    model = write_model(tmp_path / "qwen", "chatml", "qwen2")
    q = "Sort b a"
    row = {
        "prompt": q,
        "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": "a b"}],
        "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": "b a"}],
    }
    data = write_jsonl(tmp_path / "h4.jsonl", [row])
    cfg = config_from_dict({"algorithm": "dpo", "model": {"path": str(model)}, "data": {"train": str(data)}})
    screen = InspectorScreen(cfg=cfg, count_tokens=False)
    seen = {}

    async def script(pilot):
        await wait_until(pilot, lambda: screen.table_model.rows, what="pairs loaded")
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ModelViewScreen), what="the model view")
        view = pilot.app.screen.view
        seen["prompt"] = "".join(s.text for s in view.spans["prompt"])
        seen["specials"] = [s.text for s in view.spans["chosen"] if s.kind == "special"]
        seen["chosen"] = view.texts["chosen"]
        await pilot.press("escape")
        await pilot.pause()
        seen["closed"] = isinstance(pilot.app.screen, InspectorScreen)

    run_pilot(make_app(initial_screen=screen), script)
    assert seen["prompt"].endswith(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
    assert seen["prompt"].count(q) == 1
    assert seen["chosen"] == "a b<|im_end|>\n" and seen["specials"] == ["<|im_end|>"]
    assert seen["closed"]
