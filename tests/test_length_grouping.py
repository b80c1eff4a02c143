"""data.group_by_length: batches of rows of similar length, every row once an epoch, resumable."""

from __future__ import annotations

import random

import pytest

from engine.batching import GROUP_WINDOW, DataOrder
from engine.data_shapes import Record


def _lengths(n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [int(rng.lognormvariate(5.0, 0.8)) + 1 for _ in range(n)]


def _stream(order: DataOrder, steps: int) -> list[int]:
    out: list[int] = []
    for _ in range(steps):
        out.extend(order.next_global())
    return out


@pytest.mark.parametrize(("n", "batch"), [(1003, 8), (700, 5), (64, 8), (9, 4)])
def test_every_row_once_an_epoch_across_epoch_boundaries(n: int, batch: int) -> None:
    order = DataOrder(n, batch, seed=3, lengths=_lengths(n))
    stream = _stream(order, -(-3 * n // batch))
    for epoch in range(3):
        assert sorted(stream[epoch * n : (epoch + 1) * n]) == list(range(n)), epoch


@pytest.mark.parametrize("n", [1003, 1024])
def test_each_batch_holds_neighbours_in_length_within_its_window(n: int) -> None:
    batch = 8
    lengths = _lengths(n)
    order = DataOrder(n, batch, seed=0, lengths=lengths)
    stream = _stream(order, 3 * n // batch)
    span = GROUP_WINDOW * batch
    checked = 0
    for epoch in range(3):
        head = -(epoch * n) % batch  # rows finishing the batch begun in the epoch before
        epoch_rows = stream[epoch * n + head : (epoch + 1) * n]
        for w in range(0, len(epoch_rows), span):
            window = epoch_rows[w : w + span]
            full = len(window) - len(window) % batch
            for b in range(0, full, batch):
                inside = [lengths[i] for i in window[b : b + batch]]
                lo, hi = min(inside), max(inside)
                others = [lengths[i] for i in window[:b] + window[b + batch :]]
                # nothing else in the window lies strictly between the batch's shortest and longest
                assert not [x for x in others if lo < x < hi], (epoch, w, b, inside)
                checked += 1
    assert checked > 300


def test_grouping_cuts_the_padding_of_a_long_tailed_dataset() -> None:
    n, batch = 4096, 8
    lengths = _lengths(n)

    def padded(order: DataOrder) -> int:
        return sum(batch * max(lengths[i] for i in order.next_global()) for _ in range(n // batch))

    real = sum(lengths)
    grouped = padded(DataOrder(n, batch, seed=0, lengths=lengths))
    plain = padded(DataOrder(n, batch, seed=0))
    # lognormal(5, 0.8): the longest of 8 random rows is ~2x the mean row; neighbours in a
    # sorted window of 512 differ by a few percent
    assert grouped < 1.15 * real < plain / 1.5


def test_batches_still_come_in_a_seeded_random_order() -> None:
    n, batch = 2048, 8
    lengths = _lengths(n)
    first = [DataOrder(n, batch, seed=s, lengths=lengths).next_global() for s in (0, 0, 1)]
    assert first[0] == first[1] and first[0] != first[2]
    # not longest-first: the first batches of an epoch are of any length
    order = DataOrder(n, batch, seed=0, lengths=lengths)
    maxima = [max(lengths[i] for i in order.next_global()) for _ in range(GROUP_WINDOW)]
    assert maxima != sorted(maxima, reverse=True) and maxima != sorted(maxima)


def test_resume_continues_with_the_same_batches() -> None:
    n, batch = 1003, 8
    lengths = _lengths(n)
    straight = DataOrder(n, batch, seed=5, lengths=lengths)
    expected = _stream(straight, 300)
    first = DataOrder(n, batch, seed=5, lengths=lengths)
    got = _stream(first, 170)  # into the second epoch
    resumed = DataOrder(n, batch, seed=5, lengths=lengths)
    resumed.load_state_dict(first.state_dict())
    got += _stream(resumed, 130)
    assert got == expected


def test_ranks_split_each_grouped_batch() -> None:
    n, batch = 512, 8
    lengths = _lengths(n)
    whole = DataOrder(n, batch, seed=2, lengths=lengths)
    ranks = [DataOrder(n, batch, seed=2, rank=r, world=2, lengths=lengths) for r in range(2)]
    for _ in range(20):
        glob = whole.next_global()
        shares = [o.next_indices() for o in ranks]
        assert shares[0] + shares[1] != glob and sorted(shares[0] + shares[1]) == sorted(glob)


def test_without_shuffle_the_file_order_stays() -> None:
    order = DataOrder(20, 4, seed=0, shuffle=False, lengths=_lengths(20))
    assert _stream(order, 5) == list(range(20))


def test_lengths_must_match_the_rows() -> None:
    with pytest.raises(ValueError, match="3 lengths for 4 examples"):
        DataOrder(4, 2, seed=0, lengths=[1, 2, 3])


def test_a_rows_length_counts_its_prompt_and_answers_text() -> None:
    chat = Record("f.jsonl", 1, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi?"}], [{"role": "assistant", "content": "hello"}], "no")
    assert chat.chars == len("be brief") + len("hi?") + len("hello") + len("no")
    assert Record("f.jsonl", 2, "abc").chars == 3


@pytest.mark.parametrize("preset", ["tiny-dpo", "tiny-sft", "tiny-grpo"])
def test_the_preset_key_reaches_each_algorithms_data_order(preset: str, tmp_path) -> None:
    from engine.presets import load_preset
    from engine.run import Run

    orders = {}
    for flag in ("true", "false"):
        cfg = load_preset(preset, ["train.max_steps=1", "train.eval_every=0", "train.save_every=0", f"data.group_by_length={flag}", "grpo.num_generations=2", "train.batch_size=2"])
        run = Run(cfg, out_dir=tmp_path / flag)
        assert run.run()["status"] == "completed"
        orders[flag] = run.algorithm.order
    grouped = orders["true"]
    assert orders["false"].lengths is None
    assert grouped.lengths is not None and len(grouped.lengths) == grouped.n and len(set(grouped.lengths)) > 1


def test_kto_refuses_length_grouping_in_one_line(tmp_path) -> None:
    """KTO's KL estimate pairs each answer with a neighbouring row's prompt: sorted by length,
    that neighbour would often be the same prompt's other answer. A clear error, not a silent no-op."""
    from engine.presets import load_preset
    from engine.run import Run

    cfg = load_preset("tiny-kto", ["train.max_steps=1", "train.eval_every=0", "train.save_every=0", "data.group_by_length=true"])
    summary = Run(cfg, out_dir=tmp_path / "run").run()
    assert summary["status"] == "failed" and "data.group_by_length" in summary["error"] and "KTO" in summary["error"], summary


@pytest.mark.parametrize(("fmt", "arch"), [("chatml", "qwen2"), ("llama3", "llama")])
def test_grouping_on_an_h4_shaped_parquet_folder_with_real_chat_formats(fmt: str, arch: str, tmp_path) -> None:
    """HuggingFaceH4/ultrafeedback_binarized's shape (a string prompt, full chosen/rejected
    conversations) on a Qwen2 ChatML and a Llama 3 model: each row's length is its user turn
    plus both answers (the string prompt is not counted twice), and the run trains on
    batches of neighbouring lengths."""
    import datasets

    from engine.presets import load_preset
    from engine.run import Run
    from tests.real_formats import write_model

    rng = random.Random(7)
    raw = []
    for i in range(32):
        q, good, bad = f"question {i} " + "x" * rng.randint(0, 40), "good " * rng.randint(1, 12), "bad " * rng.randint(1, 12)
        raw.append({"prompt": q, "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": good}], "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": bad}]})
    (tmp_path / "h4" / "data").mkdir(parents=True)
    datasets.Dataset.from_list(raw).to_parquet(str(tmp_path / "h4" / "data" / "train_prefs-00000-of-00001.parquet"))
    model = write_model(tmp_path / arch, fmt, arch)
    overrides = [f"model.path={model}", f"data.train={tmp_path / 'h4'}", "data.train_split=train_prefs", "data.eval=", "data.task_reward=", "data.group_by_length=true",
                 "train.max_steps=2", "train.batch_size=4", "train.eval_every=0", "train.save_every=0", "train.eval_on_start=false", "model.max_length=256"]  # fmt: skip
    run = Run(load_preset("tiny-dpo", overrides), out_dir=tmp_path / "run")
    assert run.run()["status"] == "completed"
    order = run.algorithm.order
    expected = [len(r["prompt"]) + len(r["chosen"][1]["content"]) + len(r["rejected"][1]["content"]) for r in raw]
    assert list(order.lengths) == expected
    replay = DataOrder(order.n, order.batch_size, order.seed, lengths=order.lengths)
    epoch = _stream(replay, 8)  # the 32 rows, one window: each batch holds neighbours in length
    for b in range(0, 32, 4):
        inside = [expected[i] for i in epoch[b : b + 4]]
        assert not [x for j, x in enumerate(expected) if j not in epoch[b : b + 4] and min(inside) < x < max(inside)]
