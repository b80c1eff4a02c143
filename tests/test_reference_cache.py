"""DPO's reference log-probs: computed for a batch when it is first used, cached on disk by
content, reused on resume and on a second epoch, recomputed when the data changes."""

from __future__ import annotations

import json

import pytest

from engine.presets import load_preset
from engine.reference_cache import FILE_NAME, ReferenceCache, pair_key
from engine.run import Run, resume_run
from tests.helpers import metrics_rows, small_data


def run_dpo(tmp_path, name: str, n_train: int, steps: int, extra: tuple[str, ...] = ()) -> Run:
    folder = tmp_path / f"data-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    train, _ = small_data(folder, n_train=n_train)
    cfg = load_preset("tiny-dpo", [f"data.train={train}", "data.eval=", "data.task_reward=", "train.eval_on_start=false",
                                   f"train.max_steps={steps}", "train.batch_size=4", "train.eval_every=0", "train.save_every=2",
                                   "train.compile=false", *extra])
    run = Run(cfg, out_dir=tmp_path / name)
    assert run.run()["status"] == "completed"
    return run


def cached(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / FILE_NAME).read_text().splitlines()]


def test_each_pair_is_computed_once_across_epochs(tmp_path):
    run_dpo(tmp_path, "r", n_train=8, steps=6)  # 8 pairs, 4 a step: three epochs
    rows = cached(tmp_path / "r")
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8


def test_lazy_values_equal_the_upfront_pass(tmp_path):
    run_dpo(tmp_path, "lazy", n_train=8, steps=2)
    run_dpo(tmp_path, "upfront", n_train=8, steps=2, extra=("dpo.precompute_ref_log_probs=true",))
    lazy = {r["key"]: (r["chosen"], r["rejected"]) for r in cached(tmp_path / "lazy")}
    upfront = {r["key"]: (r["chosen"], r["rejected"]) for r in cached(tmp_path / "upfront")}
    assert lazy.keys() == upfront.keys()
    for k, (c, r) in lazy.items():
        # the same initial weights over the same ids; summed log-probs of ~10 tokens of magnitude ~1
        assert upfront[k] == pytest.approx((c, r), rel=1e-5, abs=1e-4)
    a, b = metrics_rows(tmp_path / "lazy"), metrics_rows(tmp_path / "upfront")
    assert [x["loss"] for x in b] == pytest.approx([x["loss"] for x in a], rel=1e-4)


def test_resume_reuses_and_changed_data_recomputes(tmp_path):
    run_dpo(tmp_path, "r", n_train=8, steps=2)
    before = cached(tmp_path / "r")
    resumed = resume_run(tmp_path / "r", ["train.max_steps=4"])
    assert resumed.run()["status"] == "completed"
    assert cached(tmp_path / "r") == before  # steps 3-4 revisit the same 8 pairs: nothing recomputed
    # the same row count with other content: new keys, so new values (never stale ones)
    other = tmp_path / "other.jsonl"
    rows = [json.loads(x) for x in (tmp_path / "data-r" / "train.jsonl").read_text().splitlines()]
    other.write_text("".join(json.dumps({**r, "chosen": r["chosen"] + " z"}) + "\n" for r in rows))
    again = resume_run(tmp_path / "r", ["train.max_steps=6", f"data.train={other}"])
    assert again.run()["status"] == "completed"
    after = cached(tmp_path / "r")
    assert len(after) == len(before) + 8 and after[: len(before)] == before


def test_keys_follow_ids_and_model():
    assert pair_key("m1", [1, 2], [3], [4]) == pair_key("m1", (1, 2), (3,), (4,))
    assert len({pair_key("m1", [1, 2], [3], [4]), pair_key("m2", [1, 2], [3], [4]), pair_key("m1", [1], [2, 3], [4])}) == 3


def test_a_torn_last_line_is_recomputed(tmp_path):
    path = tmp_path / FILE_NAME
    path.write_text(json.dumps({"key": "a", "chosen": -1.0, "rejected": -2.0}) + "\n" + '{"key": "b", "cho')
    cache = ReferenceCache(path)
    assert cache.loaded == 1
    calls = []
    got = cache.fill(["a", "b", "b"], lambda pos: calls.append(pos) or [(-3.0, -4.0)])
    assert got == [(-1.0, -2.0), (-3.0, -4.0), (-3.0, -4.0)] and calls == [[1]]
