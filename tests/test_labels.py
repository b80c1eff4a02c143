"""The label file: exact bytes, sidecar for non-pairs, undo, crash repair, resume, agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import DataError
from engine.labels import (
    Label,
    LabelFile,
    agreement,
    agreements,
    items_to_relabel,
    sidecar_path,
    snapshot_pairs,
    verdict,
)

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 16}


def make(prompt: str, a: str, b: str, label: str, who: str = "ada", **kw) -> Label:
    return Label(prompt, (a, b), label, who, "builtin:tiny-sorter", None, SAMPLING, **kw)


def frozen(path: Path) -> LabelFile:
    return LabelFile(path, clock=lambda: "2026-11-26T04:00:00+00:00")


def test_rows_are_written_byte_for_byte(tmp_path: Path) -> None:
    f = frozen(tmp_path / "labels.jsonl")
    f.append(make("sort: c b a\n", "a b c", "c b a", "a"))
    f.append(make("sort: z y\n", "z y", "y z", "b"))
    f.append(make("sort: q p\n", "q p", "p q", "tie"))
    f.append(make("sort: m n\n", "n m", "m m", "edit", edited="a", edit_text="m n"))
    common = '"labeller": "ada", "time": "2026-11-26T04:00:00+00:00", "model": "builtin:tiny-sorter", "checkpoint": null, ' \
        '"sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 16}'
    expected_pairs = (
        '{"prompt": "sort: c b a\\n", "chosen": "a b c", "rejected": "c b a", "label": "a", "n": 1, ' + common + ', "completions": ["a b c", "c b a"]}\n'
        '{"prompt": "sort: z y\\n", "chosen": "y z", "rejected": "z y", "label": "b", "n": 2, ' + common + ', "completions": ["z y", "y z"]}\n'
        '{"prompt": "sort: m n\\n", "chosen": "m n", "rejected": "n m", "label": "edit", "n": 4, ' + common
        + ', "completions": ["n m", "m m"], "edited": "a", "original": "n m"}\n'
    )
    assert (tmp_path / "labels.jsonl").read_text() == expected_pairs
    assert sidecar_path(tmp_path / "labels.jsonl") == tmp_path / "labels.skipped.jsonl"
    assert (tmp_path / "labels.skipped.jsonl").read_text() == (
        '{"prompt": "sort: q p\\n", "label": "tie", "n": 3, ' + common + ', "completions": ["q p", "p q"]}\n'
    )
    assert [r["n"] for r in f.rows()] == [1, 2, 3, 4]


def test_undo_removes_only_the_labellers_latest_label(tmp_path: Path) -> None:
    f = frozen(tmp_path / "l.jsonl")
    f.append(make("p1", "x", "y", "a", "ada"))
    before_bob = (tmp_path / "l.jsonl").read_bytes()
    f.append(make("p2", "x", "y", "b", "bob"))
    f.append(make("p3", "x", "y", "skip", "ada"))
    removed = f.undo("ada")
    assert removed is not None and removed["prompt"] == "p3" and removed["label"] == "skip"
    assert (tmp_path / "l.skipped.jsonl").read_text() == ""
    removed = f.undo("ada")
    assert removed is not None and removed["prompt"] == "p1"
    assert [r["prompt"] for r in f.rows()] == ["p2"]
    assert f.undo("ada") is None
    # the next label gets a fresh number after the highest left
    f.append(make("p4", "x", "y", "a", "ada"))
    assert [r["n"] for r in f.rows()] == [2, 3]
    assert before_bob.count(b"\n") == 1


def test_a_torn_last_line_is_ignored_then_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    f = frozen(path)
    f.append(make("p1", "x", "y", "a"))
    good = path.read_bytes()
    with open(path, "ab") as fh:
        fh.write(b'{"prompt": "p2", "cho')  # the process died mid-write
    assert [r["prompt"] for r in f.rows()] == ["p1"]
    f.repair()  # what the labelling screen does when it opens the file
    assert path.read_bytes() == good
    f.append(make("p3", "x", "y", "b"))
    lines = path.read_bytes().split(b"\n")
    assert path.read_bytes().startswith(good) and len(lines) == 3 and json.loads(lines[1])["prompt"] == "p3"


def test_a_corrupt_middle_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_text('{"prompt": "p", "label": "a"}\nnot json\n{"prompt": "q", "label": "a"}\n')
    with pytest.raises(DataError, match=r"l\.jsonl:2: invalid JSON"):
        LabelFile(path).rows()


def test_resume_knows_what_each_labeller_has_done(tmp_path: Path) -> None:
    f = frozen(tmp_path / "l.jsonl")
    f.append(make("p1", "x", "y", "a", "ada"))
    f.append(make("p2", "x", "y", "skip", "ada"))
    f.append(make("p3", "x", "y", "both_bad", "bob"))
    again = frozen(tmp_path / "l.jsonl")  # a new session
    assert again.done_prompts("ada") == {"p1", "p2"}
    assert again.done_prompts("bob") == {"p3"}
    assert again.count("ada") == 2 and again.count() == 3


def test_the_label_file_loads_unchanged_as_preference_pairs(tmp_path: Path) -> None:
    from engine.builtin import builtin_model_path
    from engine.data import load_pairs
    from engine.models import load_base

    f = frozen(tmp_path / "l.jsonl")
    f.append(make("sort: c b a\n", "a b c", "c b a", "a"))
    f.append(make("sort: q p\n", "q p", "p q", "tie"))
    f.append(make("sort: m n\n", "n m", "m m", "edit", edited="b", edit_text="m n"))
    _, tok, _ = load_base(str(builtin_model_path()))
    pairs = load_pairs(str(tmp_path / "l.jsonl"), tok, 64)
    # as the model sees them: the built-in template ends an assistant turn with </s>
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("sort: c b a\n", "a b c</s>", "c b a</s>"), ("sort: m n\n", "m n</s>", "m m</s>")]
    # the sidecar is not mistaken for pairs
    with pytest.raises(DataError, match="missing field 'chosen' and 'rejected'"):
        load_pairs(str(tmp_path / "l.skipped.jsonl"), tok, 64)


def test_verdicts_do_not_depend_on_which_pane_showed_what() -> None:
    r1 = {"prompt": "p", "completions": ["x", "y"], "label": "a"}
    r2 = {"prompt": "p", "completions": ["y", "x"], "label": "b"}
    assert verdict(r1) == verdict(r2) == "first"
    assert verdict({"prompt": "p", "completions": ["y", "x"], "label": "edit", "edited": "a"}) == "second"
    assert verdict({"prompt": "p", "completions": ["y", "x"], "label": "skip"}) is None


def test_agreement_rate_and_kappa(tmp_path: Path) -> None:
    f = frozen(tmp_path / "l.jsonl")
    # ada and bob judge the same five items; bob saw the panes swapped on two of them
    items = [("p1", "x", "y"), ("p2", "u", "v"), ("p3", "k", "l"), ("p4", "s", "t"), ("p5", "g", "h")]
    ada = ["a", "b", "a", "tie", "a"]
    bob = [("b", True), ("b", False), ("b", False), ("tie", False), ("skip", False)]
    for (p, a, b), lab in zip(items, ada, strict=True):
        f.append(make(p, a, b, lab, "ada"))
    for (p, a, b), (lab, swapped) in zip(items, bob, strict=True):
        f.append(make(p, *((b, a) if swapped else (a, b)), lab, "bob"))
    ag = agreement(f.rows(), "ada", "bob")
    # shared (skip left out): p1 agree (bob's swapped b = x), p2 agree, p3 disagree, p4 agree
    assert (ag.shared, ag.agreed) == (4, 3)
    assert ag.rate == pytest.approx(0.75)
    # Cohen's kappa by hand: ada = [first, second, first, tie], bob = [first, second, second, tie]
    p_o = 3 / 4
    p_e = (2 / 4) * (1 / 4) + (1 / 4) * (2 / 4) + (1 / 4) * (1 / 4)
    assert ag.kappa == pytest.approx((p_o - p_e) / (1 - p_e))
    assert [(a.labeller_a, a.labeller_b, a.shared) for a in agreements(f.rows())] == [("ada", "bob", 4)]


def test_relabelling_offers_other_labellers_items_once(tmp_path: Path) -> None:
    f = frozen(tmp_path / "l.jsonl")
    f.append(make("p1", "x", "y", "a", "ada"))
    f.append(make("p2", "u", "v", "skip", "ada"))
    f.append(make("p1", "y", "x", "b", "bob"))  # the same item as ada's first
    f.append(make("p3", "k", "l", "tie", "bob"))
    assert items_to_relabel(f.rows(), "cy") == [("p1", ("x", "y")), ("p2", ("u", "v")), ("p3", ("k", "l"))]
    assert items_to_relabel(f.rows(), "bob") == [("p2", ("u", "v"))]


def test_snapshot_records_which_rows_were_copied(tmp_path: Path) -> None:
    import hashlib

    f = frozen(tmp_path / "l.jsonl")
    f.append(make("p1", "x", "y", "a", "ada"))
    f.append(make("p2", "x", "y", "tie", "ada"))
    f.append(make("p3", "x", "y", "b", "bob"))
    record = snapshot_pairs(tmp_path / "l.jsonl", tmp_path / "run" / "train_labels.jsonl")
    copied = (tmp_path / "run" / "train_labels.jsonl").read_bytes()
    assert copied == (tmp_path / "l.jsonl").read_bytes()
    assert record["rows"] == 2 and record["label_numbers"] == [1, 3]
    assert record["sha256"] == hashlib.sha256(copied).hexdigest()
    assert record["labellers"] == {"ada": 1, "bob": 1}
    with pytest.raises(DataError, match="no label file yet"):
        snapshot_pairs(tmp_path / "none.jsonl", tmp_path / "x.jsonl")


def test_best_of_three_writes_a_group_of_pairs_that_undo_removes_together(tmp_path: Path) -> None:
    f = frozen(tmp_path / "l.jsonl")
    f.append(Label("p0", ("x", "y"), "a", "ada", "m", None, {}))
    f.append(Label("p1", ("u", "v", "w"), "c", "ada", "m", None, {}))
    rows = f.pairs()
    assert [(r["chosen"], r["rejected"], r["n"], r.get("group")) for r in rows] == [
        ("x", "y", 1, None), ("w", "u", 2, 2), ("w", "v", 3, 2)]
    assert all(r["completions"] == ["u", "v", "w"] for r in rows[1:])
    assert verdict(rows[1]) == "third"
    # relabelling offers the three-way item once; agreement counts it once
    assert items_to_relabel(f.rows(), "bob") == [("p0", ("x", "y")), ("p1", ("u", "v", "w"))]
    f.append(Label("p1", ("w", "u", "v"), "a", "bob", "m", None, {}))
    ag = agreement(f.rows(), "ada", "bob")
    assert (ag.shared, ag.agreed) == (1, 1)
    removed = f.undo("ada")
    assert removed is not None and removed["n"] == 2
    assert [r["n"] for r in f.rows() if r["labeller"] == "ada"] == [1]
    with pytest.raises(ValueError, match="pane 'c' was not shown"):
        Label("p", ("x", "y"), "c", "ada", "m")
