"""SVG snapshots of the labelling screen, made deterministic by relabelling a fixed label file
(no sampling involved). Update with ``uv run pytest tests/test_labelling_snapshots.py --snapshot-update``."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.labels import Label, LabelFile
from rlhf_tui.app import make_app
from rlhf_tui.screens.labelling import LabellingScreen

SIZE = (120, 34)
FIXED = Path("/tmp/rlhf-tui-snapshots-labelling")  # fixed: the path shows in the header
ITEMS = [
    ("Explain in one sentence why the sky is blue.",
     "Sunlight is scattered by the molecules of the air, and blue light, having a shorter wavelength, is scattered "
     "much more than red, so the sky looks blue from every direction.",
     "Because the ocean reflects onto it."),
    ("sort: q c m f\n", "c f m q", "q c m f"),
]


def fixed_label_file() -> Path:
    shutil.rmtree(FIXED, ignore_errors=True)
    FIXED.mkdir(parents=True)
    f = LabelFile(FIXED / "labels.jsonl", clock=lambda: "2026-11-26T04:00:00+00:00")
    for prompt, a, b in ITEMS:
        f.append(Label(prompt, (a, b), "a", "ada", "builtin:tiny-sorter", None, {}))
    return f.path


def relabel_app() -> tuple:
    screen = LabellingScreen(label_file=fixed_label_file(), labeller="bob", relabel=True, seed=1, clock=lambda: "T")
    return make_app(initial_screen=screen), screen


def test_labelling_screen(snap_compare):
    app, _ = relabel_app()
    assert snap_compare(app, terminal_size=SIZE)


def test_labelling_after_a_label_shows_agreement(snap_compare):
    app, _ = relabel_app()
    assert snap_compare(app, terminal_size=SIZE, press=["a"])


def test_labelling_edit_dialog(snap_compare):
    app, _ = relabel_app()
    assert snap_compare(app, terminal_size=SIZE, press=["right", "e"])
