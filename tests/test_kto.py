"""KTO: loss and metrics against the paper's formulas (NumPy), the KL batch built from
mismatched pairs, unpaired data read with file:line errors, every weight moving."""

from __future__ import annotations

import json
import math

import mlx.core as mx
import numpy as np
import pytest

from engine.algorithms.kto import LabelledAnswer, kl_estimate, kto_terms, mismatched
from engine.presets import load_preset
from engine.run import Run
from tests.helpers import metrics_rows, quick_overrides


@pytest.mark.parametrize("seed", [0, 1])
def test_kto_loss_and_metrics_match_the_paper(seed):
    rng = np.random.default_rng(seed)
    n = 9
    logps, ref = rng.uniform(-30, -2, n), rng.uniform(-30, -2, n)
    good = (rng.uniform(size=n) < 0.6).astype(np.float64)
    good[0], good[1] = 1.0, 0.0
    kl, beta, wd, wu = 0.7, 0.2, 1.5, 0.8
    loss, m = kto_terms(*[mx.array(a.astype(np.float32)) for a in (logps, ref, good)], mx.array(kl), beta, wd, wu)
    z = logps - ref
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    per = np.where(good == 1, wd * (1 - sig(beta * (z - kl))), wu * (1 - sig(beta * (kl - z))))
    assert float(loss.item()) == pytest.approx(per.mean(), rel=1e-5)
    rc, rr = (beta * z)[good == 1].mean(), (beta * z)[good == 0].mean()
    assert float(m["rewards/chosen"].item()) == pytest.approx(rc, rel=1e-4)
    assert float(m["rewards/rejected"].item()) == pytest.approx(rr, rel=1e-4)
    assert float(m["rewards/margins"].item()) == pytest.approx(rc - rr, rel=1e-4, abs=1e-5)
    assert float(m["logps/chosen"].item()) == pytest.approx(logps[good == 1].mean(), rel=1e-5)
    assert float(m["count/chosen"].item()) == good.sum() and float(m["count/rejected"].item()) == n - good.sum()


def test_kl_batch_pairs_each_prompt_with_another_answer_and_is_never_negative():
    rows = [LabelledAnswer((i,), (10 + i,), True, "", "") for i in range(4)]
    assert mismatched(rows) == [((0,), (13,)), ((1,), (10,)), ((2,), (11,)), ((3,), (12,))]
    assert float(kl_estimate(mx.array([-5.0, -6.0]), mx.array([-4.0, -4.0])).item()) == 0.0  # mean -1.5 -> 0
    assert float(kl_estimate(mx.array([-3.0, -4.0]), mx.array([-4.0, -4.0])).item()) == pytest.approx(0.5)


def unpaired_data(tmp_path, n: int = 32):
    from engine.presets import builtin_dir

    rows = [json.loads(line) for line in (builtin_dir() / "data" / "sort_train.jsonl").read_text().splitlines()[:n]]
    path = tmp_path / "unpaired.jsonl"
    lines = []
    for i, r in enumerate(rows):  # alternate: a good answer for even rows, a bad one for odd rows
        good = i % 2 == 0
        lines.append(json.dumps({"prompt": r["prompt"], "completion": r["chosen"] if good else r["rejected"], "label": good}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_unpaired_rows_train_and_a_bad_label_names_file_and_line(tmp_path):
    data = unpaired_data(tmp_path)
    cfg = load_preset("tiny-kto", quick_overrides(tmp_path, steps=2, **{"data__train": data}))
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    row = [r for r in metrics_rows(tmp_path / "run") if "loss" in r][0]
    assert row["count/chosen"] + row["count/rejected"] == 4  # train.batch_size answers, not pairs
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n" + json.dumps({"prompt": "p", "completion": "c", "label": "yes"}) + "\n")
    cfg = load_preset("tiny-kto", quick_overrides(tmp_path, steps=1, **{"data__train": bad}))
    summary = Run(cfg, out_dir=tmp_path / "run2").run()
    assert summary["status"] == "failed"
    assert f"{bad}:2: 'label' must be true or false" in summary["error"]


def test_one_step_moves_every_weight(tmp_path):
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load

    from engine.builtin import builtin_model_path

    cfg = load_preset("tiny-kto", quick_overrides(tmp_path, steps=1, model__adapter="full", train__eval_on_start="false"))
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    base, _ = load(str(builtin_model_path()))
    before = dict(tree_flatten(base.parameters()))
    after = mx.load(str(tmp_path / "run" / "adapters.safetensors"))
    unchanged = [k for k in before if mx.array_equal(before[k], after[k]).item()]
    assert not unchanged, f"no gradient reached {unchanged[:3]}"


def test_preset_unpairs_pairs_and_writes_eval_accuracy(tmp_path):
    cfg = load_preset("tiny-kto", quick_overrides(tmp_path, steps=3, train__eval_every=3))
    assert Run(cfg, out_dir=tmp_path / "run").run()["status"] == "completed"
    rows = metrics_rows(tmp_path / "run")
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    # train.batch_size answers a step, drawn from both halves of the unpaired pairs; the first
    # step's policy is the reference: z = 0 and KL = 0 make every answer's loss 1 - sigmoid(0)
    assert all(r["count/chosen"] + r["count/rejected"] == 4 for r in train)
    assert train[0]["kl"] == pytest.approx(0.0, abs=1e-4) and train[0]["loss"] == pytest.approx(0.5, abs=1e-4)
    for r in train:
        assert all(math.isfinite(r[k]) for k in ("loss", "kl", "reward", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"))
    evals = [r for r in rows if "eval/rewards/accuracies" in r]
    assert [r["step"] for r in evals] == [0, 3]
    assert all(0 <= r["eval/rewards/accuracies"] <= 1 for r in evals)
