"""engine.labelling without a screen: the completion queue (fill, refill, cancel, a failing model,
relabelling, undo order), a training round prepared from a label file, and the cached view of
the label file that the status line polls."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from engine.errors import DataError
from engine.labelling import (
    CompletionQueue,
    LabelStats,
    parse_sampling,
    prepare_round,
    resolve_labelling_model,
    resume_checkpoint,
    round_config,
    undone_item,
)
from engine.labels import Label, LabelFile
from engine.sampling import CompletionWriter, ModelChoice, Sampling, resolve_model_choice

T = "2026-11-26T04:00:00+00:00"
MODEL = "builtin:tiny-sorter"
SAMPLING = Sampling(temperature=1.0, top_p=1.0, max_tokens=8)
PROMPTS = ["sort: d b c\n", "sort: q p\n", "sort: z x y\n", "sort: m k\n", "sort: h g f\n", "sort: t s\n", "sort: e a\n"]
OTHER = ["sort: w v u\n", "sort: j i\n", "sort: o n l\n"]
WAIT = 120.0  # generous: how long a tiny model may take to load and sample on a busy machine


class Events:
    """What a queue reported, in order, with a way to wait for a condition on it."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.generations: list[int] = []  # the generation each event was reported for
        self.changed = threading.Condition()

    def _add(self, kind: str, text: str = "", generation: int = -1) -> None:
        with self.changed:
            self.log.append((kind, text))
            self.generations.append(generation)
            self.changed.notify_all()

    def queue(self, **kw) -> CompletionQueue:
        kw.setdefault("max_length", 64)
        return CompletionQueue(
            on_ready=lambda g: self._add("ready", "", g),
            on_loaded=lambda d, g: self._add("loaded", d, g),
            on_failed=lambda e, g: self._add("failed", e, g),
            **kw,
        )

    def wait(self, condition, what: str) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, timeout=WAIT), f"{what}: got {self.log}"

    def kinds(self) -> list[str]:
        with self.changed:
            return [k for k, _ in self.log]


def test_the_queue_fills_ahead_with_the_writers_completions_in_prompt_order() -> None:
    ev = Events()
    q = ev.queue(ahead=6, batch=4, seed=0)
    generation = q.start(PROMPTS, MODEL, SAMPLING)
    ev.wait(lambda: q.counts().ready == 6, "six items ready")
    ev.wait(lambda: q.counts().busy == 0, "the generator idle with the queue full")
    assert q.counts().ready == 6 and q.counts().pending == 1  # it stops at `ahead`
    assert set(ev.generations) == {generation} == {q.generation}  # every event names its generation
    assert ev.log[0] == ("loaded", MODEL) and q.choice == ModelChoice(MODEL, MODEL, None)
    items = q.ready_items()
    assert [i.prompt for i in items] == PROMPTS[:6]
    assert all(len(i.completions) == 2 and i.model.base == MODEL and i.model.checkpoint is None for i in items)

    # the same writer, seeded the same way, gives the same completions: batches of 4, then 2
    import mlx.core as mx

    mx.random.seed(0)
    writer = CompletionWriter(resolve_model_choice(MODEL), 64)
    expected = writer.complete(PROMPTS[:4], SAMPLING) + writer.complete(PROMPTS[4:6], SAMPLING)
    assert [list(i.completions) for i in items] == expected

    # labelling one frees a slot: the seventh prompt is sampled; after all seven, nothing is left
    assert q.advance().prompt == PROMPTS[0] and q.current.prompt == PROMPTS[0]
    ev.wait(lambda: q.counts().ready == 6 and q.counts().pending == 0 and q.counts().busy == 0, "the last prompt sampled")
    shown = [q.advance().prompt for _ in range(6)]
    assert shown == PROMPTS[1:]
    assert q.advance() is None and q.counts().finished and q.counts().left == 0
    q.cancel()
    assert q.join(WAIT)


def test_a_refill_drops_the_stale_generations_items() -> None:
    ev = Events()
    q = ev.queue(ahead=6, batch=4)
    first = q.start(PROMPTS, MODEL, SAMPLING)
    ev.wait(lambda: "ready" in ev.kinds(), "the first batch")
    old_thread = q.thread
    assert {i.prompt for i in q.ready_items()} <= set(PROMPTS) and q.counts().ready >= 1
    second = q.start(OTHER, MODEL, Sampling(max_tokens=4))
    assert second == first + 1 == q.generation
    assert q.ready_items() == [] and q.current is None  # the old items are gone at once
    assert old_thread.join(WAIT) is None and not old_thread.is_alive()
    ev.wait(lambda: q.counts().ready == len(OTHER) and q.counts().busy == 0, "the refill")
    assert [i.prompt for i in q.ready_items()] == OTHER  # nothing of the first generation came back
    assert all(len(c) <= 4 for i in q.ready_items() for c in i.completions)  # the new sampling (one character a token)
    q.cancel()
    assert q.join(WAIT)


def test_cancel_stops_the_generator_and_nothing_arrives_after_it() -> None:
    ev = Events()
    q = ev.queue(ahead=6, batch=4)
    q.start(PROMPTS, MODEL, Sampling(temperature=10.0, max_tokens=4096))  # long samples: cancel lands mid-batch
    ev.wait(lambda: "loaded" in ev.kinds(), "the model")
    ev.wait(lambda: q.counts().busy > 0 or q.counts().ready > 0, "sampling under way")
    q.cancel()
    thread = q.thread
    assert q.join(WAIT) and not thread.is_alive()
    with ev.changed:
        after = list(ev.log)
    ready = q.ready_items()
    assert "failed" not in [k for k, _ in after]  # a cancel is not an error
    # a batch cut short goes back to the prompts to do: none is lost, none is being sampled
    assert q.counts().busy == 0 and q.counts().left == len(PROMPTS)
    assert [i.prompt for i in ready] + q.pending_prompts() == PROMPTS
    # nothing changes once the thread is gone
    q.advance()
    assert ev.log == after and q.ready_items() == ready[1:]


def test_a_model_that_fails_to_load_is_reported_on_one_line() -> None:
    ev = Events()
    q = ev.queue()
    q.start(PROMPTS, "nowhere/at/all", SAMPLING)
    ev.wait(lambda: "failed" in ev.kinds(), "the failure")
    assert q.join(WAIT)
    assert ev.kinds() == ["failed"]
    message = ev.log[0][1]
    assert "nowhere/at/all: model folder not found" in message and "\n" not in message
    assert q.choice is None and q.ready_items() == [] and not q.counts().finished  # the prompts are still to do

    def broken(spec: str) -> ModelChoice:
        raise ValueError(f"cannot read\n{spec}")

    ev2 = Events()
    q2 = ev2.queue()
    q2.start(PROMPTS, "odd", SAMPLING, resolve=broken)
    ev2.wait(lambda: "failed" in ev2.kinds(), "the failure")
    assert ev2.log == [("failed", "ValueError: cannot read odd")]


def label_file(tmp_path: Path) -> LabelFile:
    f = LabelFile(tmp_path / "labels.jsonl", clock=lambda: T)
    for i in range(5):
        f.append(Label(f"sort: c b {i}\n", ("b c", "c b"), "a" if i % 2 else "b", "ada", MODEL, None, {}))
    f.append(Label("sort: q p\n", ("p q", "q p"), "skip", "ada", MODEL, None, {}))
    return f


def test_relabelling_queues_other_labellers_items_shuffled_and_undo_puts_back_in_order(tmp_path: Path) -> None:
    f = label_file(tmp_path)
    f.append(Label("sort: y x\n", ("x y", "y x"), "a", "bob", MODEL, "runs/r/checkpoints/step-000002", {}))
    rows = f.rows()
    q = CompletionQueue(seed=3)
    q.start_relabel(rows, "bob")
    items = q.ready_items()
    assert q.thread is None  # no sampling
    # every item ada judged (the skip too), none of bob's own; the order of the panes shuffled
    assert [i.prompt for i in items] == [f"sort: c b {i}\n" for i in range(5)] + ["sort: q p\n"]
    assert all(sorted(i.completions) == sorted(("b c", "c b")) for i in items[:5])
    assert len({i.completions for i in items[:5]}) == 2  # both orders occur (seed 3)
    assert items[0].model == ModelChoice("relabel", MODEL, None)
    # ada relabelling sees bob's item, with the checkpoint that wrote it
    q.start_relabel(rows, "ada")
    (mine,) = q.ready_items()
    assert mine.model.checkpoint == "runs/r/checkpoints/step-000002"

    q.start_relabel(rows, "bob")
    a, b = q.advance(), q.advance()
    q.put_back(a)  # undo: a again now, b next
    assert q.current is a and q.advance() is b and q.advance() == items[2]


def test_round_preparation_writes_the_config_the_pairs_and_their_provenance(tmp_path: Path) -> None:
    from engine.presets import load_preset

    f = label_file(tmp_path)
    preset = load_preset("tiny-dpo", ["train.learning_rate=0.001", "dpo.beta=0.2"])
    cfg = round_config(f, ModelChoice(MODEL, MODEL, None), base_config=preset)
    assert (cfg.algorithm, cfg.name, cfg.model.path, cfg.model.init_from) == ("dpo", "labels-dpo", MODEL, "")
    assert cfg.description == f"DPO on 5 labelled pairs from {f.path}"
    assert (cfg.train.learning_rate, cfg.dpo.beta) == (0.001, 0.2)
    # 5 pairs: batches of min(preset batch, 5); about 8 epochs, at least 10 steps; evals twice
    batch = min(preset.train.batch_size, 5)
    steps = max(10, min(200, -(-8 * 5 // batch)))
    assert (cfg.train.batch_size, cfg.train.max_steps, cfg.train.eval_every, cfg.train.save_every) == (batch, steps, steps // 2, 0)
    assert preset.name == "tiny-dpo" and preset.model.init_from == ""  # the preset is untouched

    checkpoint = ModelChoice("ck", "/models/base", "/runs/x/checkpoints/step-000004")
    cfg = round_config(f, checkpoint, algorithm="reward", base_config=preset, round_steps=3)
    assert (cfg.algorithm, cfg.name, cfg.model.path, cfg.model.init_from) == ("reward", "labels-reward", "/models/base", "/runs/x/checkpoints/step-000004")
    assert (cfg.train.max_steps, cfg.train.eval_every) == (3, 1)

    before = f.path.read_bytes()
    cfg = round_config(f, ModelChoice(MODEL, MODEL, None), base_config=preset)
    run_dir = prepare_round(f, cfg, tmp_path / "runs", clock=lambda: "2026-11-26T05:00:00+00:00")
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("labels-dpo-")
    copied = run_dir / "train_labels.jsonl"
    assert copied.read_bytes() == before and cfg.data.train == str(copied)
    rows = [json.loads(line) for line in before.decode().splitlines()]
    assert json.loads((run_dir / "data_provenance.json").read_text()) == {
        "label_file": str(f.path.resolve()),
        "copied_to": str(copied.resolve()),
        "rows": 5,
        "label_numbers": [1, 2, 3, 4, 5],  # the skip (6) is in the sidecar, not a pair
        "sha256": hashlib.sha256(before).hexdigest(),
        "labellers": {"ada": 5},
        "labels": dict(Counter(r["label"] for r in rows)),
        "models": [MODEL],
        "algorithm": "dpo",
        "base_model": MODEL,
        "init_from": None,
        "skipped_file": str((tmp_path / "labels.skipped.jsonl").resolve()),
        "started": "2026-11-26T05:00:00+00:00",
    }

    empty = LabelFile(tmp_path / "none.jsonl")
    with pytest.raises(DataError, match=r"none\.jsonl: no label file yet"):
        prepare_round(empty, cfg, tmp_path / "runs")


def test_the_stats_view_reads_the_file_only_when_it_changes(tmp_path: Path) -> None:
    f = label_file(tmp_path)  # the writer (appends read the file themselves, to number rows)
    reader = LabelFile(f.path)  # what the screen's status line reads through
    reads = []
    parse = reader.rows

    def counted() -> list:
        reads.append(1)
        return parse()

    reader.rows = counted  # type: ignore[method-assign]
    stats = LabelStats(reader)
    first = stats.summary()
    assert (len(first.rows), first.pairs, first.others) == (6, 5, 1) and len(reads) == 1
    for _ in range(5):  # what the status line does every second
        assert stats.summary() is first
    assert len(reads) == 1

    f.append(Label("sort: y x\n", ("x y", "y x"), "a", "bob", MODEL, None, {}))  # a pair
    s = stats.summary()
    assert (len(s.rows), s.pairs, s.others) == (7, 6, 1) and len(reads) == 2
    f.append(Label("sort: y x\n", ("x y", "y x"), "tie", "cy", MODEL, None, {}))  # into the sidecar
    s = stats.summary()
    assert (s.pairs, s.others) == (6, 2) and len(reads) == 3
    assert stats.summary() is s and len(reads) == 3
    f.undo("cy")
    s = stats.summary()
    assert (s.pairs, s.others) == (6, 1) and len(reads) == 4
    # agreement comes with it: ada and bob judged different items, so none shared
    assert s.agreements == ()
    f.append(Label("sort: c b 0\n", ("b c", "c b"), "b", "bob", MODEL, None, {}))  # ada said b too
    s = stats.summary()
    assert len(reads) == 5 and [(a.labeller_a, a.labeller_b, a.shared, a.agreed) for a in s.agreements] == [("ada", "bob", 1, 1)]


def test_coming_back_resumes_with_the_weights_last_labelled_from_the_same_start(tmp_path: Path) -> None:
    checkpoint = tmp_path / "runs" / "r" / "checkpoints" / "step-000002"
    checkpoint.mkdir(parents=True)
    f = LabelFile(tmp_path / "labels.jsonl", clock=lambda: T)
    f.append(Label("sort: b a\n", ("a b", "b a"), "a", "ada", MODEL, None, {}))
    assert resume_checkpoint(f.rows(), "ada", MODEL) is None  # labelled the base model itself
    f.append(Label("sort: c a\n", ("a c", "c a"), "a", "ada", MODEL, str(checkpoint), {}))
    f.append(Label("sort: d a\n", ("a d", "d a"), "a", "bob", MODEL, None, {}))
    assert resume_checkpoint(f.rows(), "ada", MODEL) == str(checkpoint)  # ada's last label, not bob's
    assert resume_checkpoint(f.rows(), "ada", "other/model") is None  # started from another model
    assert resume_checkpoint(f.rows(), "bob", MODEL) is None and resume_checkpoint(f.rows(), "cy", MODEL) is None
    checkpoint.rmdir()
    assert resume_checkpoint(f.rows(), "ada", MODEL) is None  # the weights are gone


def test_an_undone_label_comes_back_as_shown_under_its_weights(tmp_path: Path) -> None:
    f = LabelFile(tmp_path / "labels.jsonl", clock=lambda: T)
    f.append(Label("sort: c b a\n", ("a b c", "c a b", "b a c"), "b", "ada", "/m/base", "/runs/r/ck", {}))
    row = f.undo("ada")
    item = undone_item(row, ModelChoice("runs/r", "builtin:tiny-sorter", None, "/runs/r"))
    assert (item.prompt, item.completions) == ("sort: c b a\n", ("a b c", "c a b", "b a c"))
    assert item.model == ModelChoice("runs/r", "/m/base", "/runs/r/ck", "/runs/r")


def test_sampling_settings_parse_over_the_current_ones() -> None:
    base = Sampling(temperature=1.0, top_p=1.0, max_tokens=16)
    assert parse_sampling("temperature=0.8, max_tokens=32", base) == Sampling(0.8, 1.0, 32, 2)
    assert parse_sampling("n=4 top_p=0.9", base) == Sampling(1.0, 0.9, 16, 4)
    with pytest.raises(ValueError, match=r"'max_tokens=lots': max_tokens must be an integer"):
        parse_sampling("max_tokens=lots", base)
    with pytest.raises(ValueError, match=r"'beam=2': expected temperature="):
        parse_sampling("beam=2", base)
    with pytest.raises(ValueError, match=r"n = 5: compare 2 to 4"):
        parse_sampling("n=5", base)


def test_live_needs_a_run_that_has_loaded_its_model(tmp_path: Path) -> None:
    from engine.errors import EngineError

    with pytest.raises(EngineError, match=r"^'live' needs a run training in this app"):
        resolve_labelling_model("live", label_path=tmp_path / "labels.jsonl", live_run=None)
    assert resolve_labelling_model(MODEL, label_path=tmp_path / "labels.jsonl") == ModelChoice(MODEL, MODEL, None)


def test_labelling_while_the_queue_refills_shows_every_prompt_once_in_order() -> None:
    ev = Events()
    q = ev.queue(ahead=2, batch=1)  # small: the labeller keeps catching up with the generator
    q.start(PROMPTS, MODEL, Sampling(max_tokens=4))
    shown = []
    while len(shown) < len(PROMPTS):
        ev.wait(lambda: q.counts().ready > 0 or "failed" in ev.kinds(), "the next item")
        item = q.advance()
        shown.append(item.prompt)
        assert q.counts().ready <= 2  # never more than `ahead` waiting
    assert shown == PROMPTS
    ev.wait(lambda: q.counts().busy == 0, "the generator idle")
    assert q.counts().finished and q.advance() is None
    q.cancel()
    assert q.join(WAIT)
