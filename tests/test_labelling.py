"""The labelling screen driven with Pilot: every key, edit, undo, quit and resume, byte-exact files,
and closing the loop (a DPO round from a checkpoint on the labels, then labelling its weights)."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path

from engine.labels import Label
from engine.sampling import Sampling
from rlhf_tui.app import make_app
from rlhf_tui.screens.labelling import EditScreen, LabellingScreen
from rlhf_tui.screens.monitor import MonitorScreen
from tests import helpers

T = "2026-11-26T04:00:00+00:00"
SAMPLING = Sampling(temperature=1.0, top_p=1.0, max_tokens=8)
PROMPTS = ["sort: d b c\n", "sort: q p\n", "sort: z x y\n", "sort: m k\n", "sort: h g f\n", "sort: t s\n", "sort: e a\n"]


wait_until = partial(helpers.wait_until, timeout=300.0)


def prompt_file(tmp_path: Path, prompts: list[str] = PROMPTS) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def screen(tmp_path: Path, **kw) -> LabellingScreen:
    kw.setdefault("label_file", tmp_path / "labels.jsonl")
    kw.setdefault("prompts", prompt_file(tmp_path))
    kw.setdefault("labeller", "ada")
    kw.setdefault("sampling", SAMPLING)
    kw.setdefault("max_length", 64)
    return LabellingScreen(clock=lambda: T, **kw)


def expected_line(item, label: str, n: int, **extra) -> bytes:
    """The row as the issue specifies it, written out here independently of engine.labels."""
    a, b = item.completions
    row = {"prompt": item.prompt}
    if label == "a":
        row |= {"chosen": a, "rejected": b}
    elif label == "b":
        row |= {"chosen": b, "rejected": a}
    elif label == "edit":
        row |= {"chosen": extra["text"], "rejected": b if extra["pane"] == "b" else a}
    row |= {"label": label, "n": n, "labeller": "ada", "time": T, "model": "builtin:tiny-sorter", "checkpoint": item.model.checkpoint,
            "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 8}, "completions": [a, b]}
    if label == "edit":
        row |= {"edited": extra["pane"], "original": row["rejected"]}
    return (json.dumps(row, ensure_ascii=False) + "\n").encode()


def test_every_key_edit_and_undo_write_the_exact_bytes(tmp_path: Path) -> None:
    pairs, others = tmp_path / "labels.jsonl", tmp_path / "labels.skipped.jsonl"

    async def scenario() -> None:
        scr = screen(tmp_path)
        app = make_app(initial_screen=scr, runs_root=str(tmp_path / "runs"))
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_until(pilot, lambda: scr.current is not None, what="the first completions")
            want_pairs, want_others = b"", b""
            shown = []
            for n, key in enumerate("abtxs", 1):
                item = scr.current
                shown.append(item.prompt)
                assert str(scr.query_one("#text-a").render()) == (item.completions[0] or "(empty)")
                await pilot.press(key)
                label = {"a": "a", "b": "b", "t": "tie", "x": "both_bad", "s": "skip"}[key]
                line = expected_line(item, label, n)
                if label in ("a", "b"):
                    want_pairs += line
                else:
                    want_others += line
                await wait_until(pilot, lambda: scr.current is not None, what="the next completions")
            assert shown == PROMPTS[:5]
            assert pairs.read_bytes() == want_pairs
            assert others.read_bytes() == want_others
            assert scr.session_count == 5
            assert "5 labelled" in str(scr.stats_text())

            # edit B: the labeller's text becomes chosen, the model's B rejected
            item = scr.current
            await pilot.press("right", "e")
            await wait_until(pilot, lambda: isinstance(app.screen, EditScreen), what="the editor")
            area = app.screen.query_one("#edit-text")
            assert area.text == item.completions[1]
            area.select_all()
            await pilot.press(*"k m")
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: isinstance(app.screen, LabellingScreen) and scr.current is not item, what="the edit saved")
            want_pairs += expected_line(item, "edit", 6, pane="b", text="k m")
            assert pairs.read_bytes() == want_pairs

            # undo twice: the edit, then the skip (from the sidecar); both come back to be judged
            next_item = scr.current
            await pilot.press("u")
            await pilot.pause()
            assert scr.current.prompt == item.prompt and scr.current.completions == item.completions
            await pilot.press("u")
            await pilot.pause()
            assert scr.current.prompt == PROMPTS[4]
            assert pairs.read_bytes() == want_pairs[: want_pairs.rindex(b'{"prompt"')]
            assert others.read_bytes().count(b"\n") == 2 and b'"skip"' not in others.read_bytes()
            assert scr.session_count == 4
            # the undone items are offered again in order, ahead of what was queued
            await pilot.press("a")
            await pilot.pause()
            assert scr.current.prompt == item.prompt
            await pilot.press("a")
            await pilot.pause()
            assert scr.current is next_item
            rows = [json.loads(line) for line in pairs.read_text().splitlines()]
            assert [r["n"] for r in rows] == [1, 2, 5, 6]

    asyncio.run(scenario())


def test_quit_and_come_back_resumes_at_the_first_unlabelled_prompt(tmp_path: Path) -> None:
    async def label(keys: str, labeller: str = "ada") -> list[str]:
        scr = screen(tmp_path, labeller=labeller)
        app = make_app(initial_screen=scr, runs_root=str(tmp_path / "runs"))
        seen = []
        async with app.run_test(size=(120, 36)) as pilot:
            for key in keys:
                await wait_until(pilot, lambda: scr.current is not None or "All prompts here are labelled" in str(scr.query_one("#label-prompt-text").render()))
                if scr.current is None:
                    break
                seen.append(scr.current.prompt)
                await pilot.press(key)
            await pilot.press("ctrl+q")
        return seen

    assert asyncio.run(label("as")) == PROMPTS[:2]
    assert asyncio.run(label("t")) == PROMPTS[2:3]  # resumes after the skip, too
    assert asyncio.run(label("a", labeller="bob")) == PROMPTS[:1]  # another labeller starts at the top
    assert asyncio.run(label("abab")) == PROMPTS[3:7]
    assert asyncio.run(label("a")) == []  # everything labelled


def test_relabelling_shows_agreement(tmp_path: Path) -> None:
    from engine.labels import LabelFile

    f = LabelFile(tmp_path / "labels.jsonl", clock=lambda: T)
    for p, a, b in [("sort: c b\n", "b c", "c b"), ("sort: f e\n", "e f", "f e")]:
        f.append(Label(p, (a, b), "a", "ada", "builtin:tiny-sorter", None, {}))

    async def scenario() -> None:
        scr = screen(tmp_path, labeller="bob", relabel=True, seed=3)
        app = make_app(initial_screen=scr, runs_root=str(tmp_path / "runs"))
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            for _ in range(2):
                a, b = scr.current.completions
                # bob agrees on the first item and disagrees on the second
                agree = scr.current.prompt == "sort: c b\n"
                key = ("a" if a == "b c" else "b") if agree else ("a" if a == "f e" else "b")
                await pilot.press(key)
                await pilot.pause()
            assert scr.current is None
            assert "agree with ada 50% of 2" in str(scr.stats_text())

    asyncio.run(scenario())


def test_a_label_file_feeds_a_dpo_run_unchanged(tmp_path: Path) -> None:
    from engine.labels import LabelFile
    from engine.presets import load_preset
    from engine.run import Run

    f = LabelFile(tmp_path / "labels.jsonl", clock=lambda: T)
    f.append(Label("sort: c b a\n", ("a b c", "c a b"), "a", "ada", "builtin:tiny-sorter", None, {}))
    f.append(Label("sort: q p\n", ("q p", "p q"), "b", "ada", "builtin:tiny-sorter", None, {}))
    f.append(Label("sort: k j\n", ("j k", "k j"), "tie", "ada", "builtin:tiny-sorter", None, {}))
    f.append(Label("sort: y x\n", ("y x", "x x"), "edit", "ada", "builtin:tiny-sorter", None, {}, edited="a", edit_text="x y"))
    before = f.path.read_bytes()
    cfg = load_preset("tiny-dpo", [f"data.train={f.path}", "data.eval=", "train.max_steps=2", "train.batch_size=3", "train.save_every=0"])
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert f.path.read_bytes() == before
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["rewards/accuracies"] is not None and rows[-1]["step"] == 2


def test_a_round_trains_from_the_checkpoint_then_labelling_uses_the_new_weights(tmp_path: Path) -> None:
    import mlx.core as mx
    from mlx_lm import load

    from engine.api import adapter_path, base_model_path
    from engine.presets import load_preset
    from engine.run import Run
    from tests.helpers import small_data

    train, evalf = small_data(tmp_path, n_train=32, n_eval=8)
    first = tmp_path / "round0"
    cfg = load_preset("tiny-dpo", [f"data.train={train}", f"data.eval={evalf}", "train.max_steps=2", "train.batch_size=4"])
    assert Run(cfg, out_dir=first).run()["status"] == "completed"
    checkpoint = first / "checkpoints" / "step-000002"
    assert checkpoint.is_dir()

    async def scenario() -> Path:
        scr = screen(tmp_path, model=str(checkpoint), round_steps=2)
        app = make_app("tiny-dpo", initial_screen=scr, runs_root=str(tmp_path / "runs"))
        async with app.run_test(size=(120, 36)) as pilot:
            for key in "abab":
                await wait_until(pilot, lambda: scr.current is not None, what="completions from the checkpoint")
                assert scr.current.model.checkpoint == str(checkpoint)
                await pilot.press(key)
            await pilot.press("r")
            await pilot.pause()
            await pilot.press("y")
            await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the run monitor")
            await wait_until(pilot, lambda: app.active_run is not None and not app.active_run.running, timeout=180, what="the round")
            assert app.active_run.summary["status"] == "completed", app.active_run.summary
            run_dir = Path(scr.last_round)
            await pilot.press("escape")  # back from the monitor to the labelling screen
            await wait_until(pilot, lambda: app.screen is scr)
            # label the next round with the new weights
            scr.use_model(str(run_dir))
            await wait_until(pilot, lambda: scr.current is not None, what=lambda: f"completions from the new run ({scr._status}, {list(pilot.app._notifications)})")
            weights = str(adapter_path(run_dir).resolve())  # the round's newest checkpoint (engine.run_reader)
            assert scr.current.model.checkpoint == weights and scr.current.prompt == PROMPTS[4]
            await pilot.press("a")
            await pilot.pause()
            last = json.loads((tmp_path / "labels.jsonl").read_text().splitlines()[-1])
            assert last["checkpoint"] == weights
            return run_dir

    run_dir = asyncio.run(scenario())

    async def come_back() -> None:  # a new session resumes with the weights last labelled
        scr = screen(tmp_path, model="builtin:tiny-sorter")
        app = make_app(initial_screen=scr, runs_root=str(tmp_path / "runs"))
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_until(pilot, lambda: scr.current is not None, what="completions after coming back")
            assert scr.current.model.checkpoint == str(adapter_path(run_dir).resolve()) and scr.current.prompt == PROMPTS[5]

    asyncio.run(come_back())
    labels = tmp_path / "labels.jsonl"
    provenance = json.loads((run_dir / "data_provenance.json").read_text())
    copied = run_dir / "train_labels.jsonl"
    assert copied.read_bytes() == labels.read_bytes()[: copied.stat().st_size]
    assert provenance["rows"] == 4 and provenance["label_numbers"] == [1, 2, 3, 4]
    assert provenance["label_file"] == str(labels.resolve()) and provenance["init_from"] == str(checkpoint)
    config = (run_dir / "config.toml").read_text()
    assert f'init_from = "{checkpoint}"' in config and f'train = "{copied}"' in config

    # the round started from the checkpoint: its step-1 chosen log-probs (taken before the
    # first update, over all 4 pairs) are those of the checkpoint loaded by mlx-lm itself
    model, tok = load(base_model_path(first), adapter_path=str(checkpoint))
    total = 0.0
    for line in copied.read_text().splitlines():
        row = json.loads(line)
        p = tok.encode(row["prompt"])
        c = tok.encode(row["chosen"], add_special_tokens=False) + [tok.eos_token_id]
        logits = model(mx.array([p + c]))[0, len(p) - 1 : -1].astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        total += sum(float(logp[i, t]) for i, t in enumerate(c))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step1 = next(r for r in rows if "logps/chosen" in r)  # the first training row (an eval row at step 0 may come first)
    assert step1["step"] == 1
    assert abs(step1["logps/chosen"] - total / 4) < 1e-3 * max(1.0, abs(total / 4))


def test_live_weights_and_lora_rounds_load_as_trained(tmp_path: Path) -> None:
    """A live run's snapshot holds its current weights; a LoRA round started from a LoRA run
    (model.init_from) begins exactly where that run ended."""
    import mlx.core as mx
    from mlx_lm import load

    from engine.api import base_model_path
    from engine.presets import load_preset
    from engine.run import Run
    from engine.sampling import CompletionWriter, resolve_model_choice, snapshot_live_run
    from tests.helpers import small_data

    train, _ = small_data(tmp_path, n_train=16, n_eval=4)
    common = [f"data.train={train}", "data.eval=", "train.batch_size=4", "model.adapter=lora", "model.lora_rank=4"]
    run0 = Run(load_preset("tiny-dpo", [*common, "train.max_steps=2"]), out_dir=tmp_path / "r0")
    assert run0.run()["status"] == "completed"
    choice = snapshot_live_run(run0, tmp_path / "live")
    saved = mx.load(str(tmp_path / "live" / "adapters.safetensors"))
    final = mx.load(str(tmp_path / "r0" / "adapters.safetensors"))
    assert set(saved) == set(final) and all(mx.array_equal(saved[k], final[k]).item() for k in saved)
    writer = CompletionWriter(choice, 64)
    assert len(writer.complete(["sort: b a\n"], Sampling(max_tokens=4))[0]) == 2

    run1 = Run(load_preset("tiny-dpo", [*common, "train.max_steps=1", "train.batch_size=16", f"model.init_from={tmp_path / 'r0'}"]), out_dir=tmp_path / "r1")
    assert run1.run()["status"] == "completed"
    model, tok = load(base_model_path(tmp_path / "r0"), adapter_path=str(tmp_path / "r0"))
    total = 0.0
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    for row in rows:
        p = tok.encode(row["prompt"])
        c = tok.encode(row["chosen"], add_special_tokens=False) + [tok.eos_token_id]
        logits = model(mx.array([p + c]))[0, len(p) - 1 : -1].astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        total += sum(float(logp[i, t]) for i, t in enumerate(c))
    step1 = json.loads((tmp_path / "r1" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(step1["logps/chosen"] - total / len(rows)) < 1e-3 * max(1.0, abs(total / len(rows)))
    # labelling the LoRA round loads its chain (r0's adapters fused, then r1's)
    chained = resolve_model_choice(str(tmp_path / "r1"))
    assert chained.adapter_dir == str((tmp_path / "r1" / "checkpoints" / "step-000001").resolve())  # its newest checkpoint
    assert len(CompletionWriter(chained, 64).complete(["sort: b a\n"], Sampling(max_tokens=4))[0]) == 2


def test_labelling_the_live_run_of_the_app(tmp_path: Path) -> None:
    from engine.presets import load_preset
    from tests.helpers import small_data

    train, _ = small_data(tmp_path, n_train=16, n_eval=4)

    async def scenario() -> None:
        app = make_app("tiny-dpo", runs_root=str(tmp_path / "runs"))
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            app.start_run(load_preset("tiny-dpo", [f"data.train={train}", "data.eval=", "train.max_steps=3", "train.batch_size=4"]))
            await wait_until(pilot, lambda: not app.active_run.running, what="the run")
            scr = screen(tmp_path, model="nowhere/at/all")
            app.push_screen(scr)
            await wait_until(pilot, lambda: scr._status.startswith("error"), what="the error")
            assert "nowhere/at/all: model folder not found" in str(scr.query_one("#label-prompt-text").render())
            scr.use_model("live")
            await wait_until(pilot, lambda: scr.current is not None, what="completions from the live run")
            folder = tmp_path / "labels.models" / f"{app.active_run.directory.id}-step-000003"
            assert scr.current.model.checkpoint == str(folder.resolve())
            assert (folder / "adapters.safetensors").exists()
            await pilot.press("b")
            await pilot.pause()
            row = json.loads((tmp_path / "labels.jsonl").read_text())
            assert row["checkpoint"] == str(folder.resolve())

    asyncio.run(scenario())


def test_the_pair_inspector_opens_the_label_file(tmp_path: Path) -> None:
    from engine.labels import LabelFile
    from rlhf_tui.screens.inspector import InspectorScreen

    f = LabelFile(tmp_path / "labels.jsonl", clock=lambda: T)
    f.append(Label("sort: c b\n", ("b c", "c b"), "a", "ada", "builtin:tiny-sorter", None, {}))
    f.append(Label("sort: f e\n", ("e f", "f e"), "tie", "ada", "builtin:tiny-sorter", None, {}))
    f.append(Label("sort: h g\n", ("h g", "g g"), "edit", "ada", "builtin:tiny-sorter", None, {}, edited="a", edit_text="g h"))

    async def scenario() -> None:
        scr = screen(tmp_path, labeller="bob", relabel=True)
        app = make_app(initial_screen=scr, runs_root=str(tmp_path / "runs"))
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            await pilot.press("i")
            await wait_until(pilot, lambda: isinstance(app.screen, InspectorScreen), what="the inspector")
            await pilot.pause()
            inspector = app.screen
            assert inspector.load_error == ""
            assert [(r.prompt, r.chosen, r.rejected) for r in inspector.table_model.rows] == [
                ("sort: c b\n", "b c", "c b"), ("sort: h g\n", "g h", "h g")]

    asyncio.run(scenario())


def test_a_round_from_a_base_model_uses_the_presets_hyperparameters(tmp_path: Path) -> None:
    from engine.labels import LabelFile
    from engine.presets import load_preset

    f = LabelFile(tmp_path / "labels.jsonl", clock=lambda: T)
    for i in range(5):
        f.append(Label(f"sort: c b {i}\n", ("b c", "c b"), "a", "ada", "builtin:tiny-sorter", None, {}))
    f.append(Label("sort: q p\n", ("p q", "q p"), "skip", "ada", "builtin:tiny-sorter", None, {}))
    preset = load_preset("tiny-dpo", ["train.learning_rate=0.001", "dpo.beta=0.2"])
    cfg = screen(tmp_path, model="builtin:tiny-sorter", base_config=preset).round_config()
    assert (cfg.algorithm, cfg.name, cfg.model.path, cfg.model.init_from) == ("dpo", "labels-dpo", "builtin:tiny-sorter", "")
    assert (cfg.train.learning_rate, cfg.dpo.beta, cfg.data.eval) == (0.001, 0.2, preset.data.eval)
    # 5 pairs (the skip is not one): batches of 5, about 8 epochs but at least 10 steps
    assert (cfg.train.batch_size, cfg.train.max_steps) == (5, 10)
    assert preset.train.learning_rate == 0.001 and preset.name == "tiny-dpo"  # the preset itself is untouched


def test_best_of_three(tmp_path: Path) -> None:
    pairs = tmp_path / "labels.jsonl"

    async def scenario() -> None:
        scr = screen(tmp_path, sampling=Sampling(max_tokens=8, n=3))
        app = make_app(initial_screen=scr, runs_root=str(tmp_path / "runs"))
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_until(pilot, lambda: scr.current is not None, what="three completions")
            item = scr.current
            assert len(item.completions) == 3
            assert [scr.query_one(f"#pane-{p}").display for p in "abcd"] == [True, True, True, False]
            await pilot.press("d")  # no pane D: nothing happens
            await pilot.pause()
            assert scr.current is item and not pairs.exists()
            await pilot.press("c")
            await pilot.pause()
            a, b, c = item.completions
            rows = [json.loads(line) for line in pairs.read_text().splitlines()]
            assert [(r["chosen"], r["rejected"], r["n"], r["group"], r["label"]) for r in rows] == [(c, a, 1, 1, "c"), (c, b, 2, 1, "c")]
            assert all(r["completions"] == [a, b, c] and r["sampling"]["max_tokens"] == 8 for r in rows)
            await pilot.press("u")
            await pilot.pause()
            assert pairs.read_text() == "" and scr.current.completions == item.completions
            # edit the selected pane (left from A wraps round to C)
            await pilot.press("left", "e")
            await wait_until(pilot, lambda: isinstance(app.screen, EditScreen))
            assert app.screen.query_one("#edit-text").text == c

    asyncio.run(scenario())
