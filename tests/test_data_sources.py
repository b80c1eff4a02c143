"""Datasets by file, folder or Hub id: split names and slices, column maps, offline errors,
the `rlhf-tui data` view, and a DPO run on a Hub-layout parquet folder of the H4 shape."""

from __future__ import annotations

import json

import pytest

from engine.config import config_from_dict
from engine.data import RunData
from engine.errors import DataError
from tests.helpers import cli
from tests.real_formats import write_model

Q = "Sort b a"


def h4_row(i: int) -> dict:
    q = f"question {i}"
    return {
        "prompt": q,
        "prompt_id": f"id{i}",
        "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": f"good {i}"}],
        "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": f"bad {i}"}],
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"good {i}"}],
        "score_chosen": 8.0,
        "score_rejected": 2.0,
    }


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """A folder laid out as a Hub dataset repo: data/train_prefs-*.parquet, data/test_prefs-*.parquet."""
    import datasets

    root = tmp_path_factory.mktemp("ultrafeedback")
    (root / "data").mkdir()
    datasets.Dataset.from_list([h4_row(i) for i in range(40)]).to_parquet(str(root / "data" / "train_prefs-00000-of-00001.parquet"))
    datasets.Dataset.from_list([h4_row(100 + i) for i in range(10)]).to_parquet(str(root / "data" / "test_prefs-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="module")
def chatml_model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("qwen2-chatml"), "chatml", "qwen2")


def cfg_for(train: str, **data) -> object:
    return config_from_dict({"algorithm": "dpo", "data": {"train": train, **data}})


def test_hub_layout_folder_with_split_names_and_slices(hub_folder):
    data = RunData(cfg_for(str(hub_folder), train_split="train_prefs[:25]", eval_split="test_prefs[-4:]"))
    train = data.records("train", "preference")
    assert len(train) == 25 and train[0].prompt == [{"role": "user", "content": "question 0"}]
    assert train[0].chosen == [{"role": "assistant", "content": "good 0"}] and train[0].shape == "prompt+conversations"
    ev = data.records("eval", "preference")  # data.eval empty: data.train's eval split
    assert [r.chosen[0]["content"] for r in ev] == [f"good {100 + i}" for i in range(6, 10)]
    assert len(RunData(cfg_for(str(hub_folder), train_split="train_prefs[10%:20%]")).records("train", "preference")) == 4


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"train_split": "nope"}, "no split 'nope' (it has test_prefs, train_prefs)"),
        ({"train_split": "train_prefs[:41]"}, "reaches past the end (the split has 40 rows)"),
        ({"train_split": "train_prefs[5:2]"}, "selects no rows"),
        ({"train_split": "train_prefs", "columns": "prompt=question"}, "no column 'question' (data.columns maps prompt=question"),
    ],
)
def test_bad_splits_and_columns_are_one_line(hub_folder, data, fragment):
    with pytest.raises(DataError) as err:
        RunData(cfg_for(str(hub_folder), **data)).records("train", "preference")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_save_to_disk_folder_and_column_map(tmp_path):
    import datasets

    rows = [{"question": f"q{i}", "good": f"a{i}", "bad": f"b{i}"} for i in range(6)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:2])}).save_to_disk(str(tmp_path / "saved"))
    data = RunData(cfg_for(str(tmp_path / "saved"), columns="prompt=question,chosen=good,rejected=bad", train_split="train[:4]"))
    recs = data.records("train", "preference")
    assert [(r.prompt, r.chosen, r.rejected) for r in recs] == [(f"q{i}", f"a{i}", f"b{i}") for i in range(4)]
    assert len(data.records("eval", "preference")) == 2


def test_a_jsonl_file_takes_a_slice(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(10)))
    recs = RunData(cfg_for(str(f), train_split="train[-3:]")).records("train", "preference")
    assert [r.prompt for r in recs] == ["p7", "p8", "p9"] and recs[0].where == f"{f}:8"


def test_a_hub_id_offline_and_not_cached_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DataError, match=r"^nobody/no-such-dataset: not in the local Hugging Face cache and the Hub cannot be reached"):
        RunData(cfg_for("nobody/no-such-dataset")).records("train", "preference")


def test_data_command_shows_h4_rows_templated_once(hub_folder, chatml_model):
    sets = ["--set", f"model.path={chatml_model}", "--set", f"data.train={hub_folder}", "--set", "data.train_split=train_prefs[:5]"]
    out = cli("data", "tiny-dpo", *sets, "--show", "2", "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    first, summary = lines[0], lines[-1]["summary"]
    assert len(lines) == 3
    assert first["prompt"].endswith("<|im_start|>user\nquestion 0<|im_end|>\n<|im_start|>assistant\n")
    assert first["prompt"].count("question 0") == 1
    assert first["chosen"] == "good 0<|im_end|>\n" and first["rejected"] == "bad 0<|im_end|>\n"
    assert first["chosen_tokens"] == len("good 0") + 2  # one token a byte, <|im_end|>, "\n"
    assert summary["records"] == 5 and summary["shape"] == "prompt+conversations" and summary["chat_template"] is True
    human = cli("data", "tiny-dpo", *sets, "--show", "1")
    assert human.returncode == 0 and "prompt+conversations" in human.stdout and "<|im_end|>" in human.stdout
    bad = cli("data", "tiny-dpo", *sets[:4], "--set", "data.train_split=nope")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no split 'nope'" in bad.stderr


def test_dpo_trains_on_a_sliced_parquet_folder_offline(hub_folder, chatml_model, tmp_path):
    out = cli(
        "run", "tiny-dpo", "--out", str(tmp_path / "run"),
        "--set", f"model.path={chatml_model}", "--set", f"data.train={hub_folder}",
        "--set", "data.train_split=train_prefs[:8]", "--set", "data.eval_split=test_prefs[:4]",
        "--set", "data.task_reward=", "--set", "train.max_steps=2", "--set", "train.batch_size=4",
        "--set", "train.eval_every=0", "--set", "train.save_every=0", "--set", "model.max_length=128",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr + out.stdout
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "eval/rewards/accuracies" not in r]
    assert [r["step"] for r in train] == [1, 2]
    cached = (tmp_path / "run" / "reference_logps.jsonl").read_text().splitlines()
    # 8 train pairs (two batches of 4) and 4 eval pairs, each computed once when first used,
    # although eval ran twice (the starting model at step 0, and the end)
    assert len(cached) == 12 and len({json.loads(x)["key"] for x in cached}) == 12
    assert [r["step"] for r in rows if "eval/rewards/accuracies" in r] == [0, 2]


def test_a_run_says_when_max_length_cuts_its_rows(tmp_path):
    from engine import events as ev
    from engine.presets import load_preset
    from engine.run import Run
    from tests.helpers import quick_overrides

    folder = tmp_path / "d"
    folder.mkdir()
    cfg = load_preset("tiny-dpo", [*quick_overrides(folder, steps=1), "model.max_length=16", "data.task_reward=", "train.eval_on_start=false", "data.eval="])
    run = Run(cfg, out_dir=tmp_path / "r")
    alerts: list[str] = []
    run.subscribe(lambda e: alerts.append(e.text) if isinstance(e, ev.Alert) else None)
    assert run.run()["status"] == "completed"
    # the bundled pairs are 14-18 prompt tokens and 8-12 answer tokens: every one is over 16
    assert any(a.startswith("64 of the first 64 training rows are longer than model.max_length = 16") for a in alerts), alerts


def test_sft_on_a_llama3_model_with_conversational_rows(tmp_path):
    model = write_model(tmp_path / "llama3", "llama3", "llama")
    rows = [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i}"}]} for i in range(8)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = cli("run", "tiny-sft", "--out", str(tmp_path / "run"), "--set", f"model.path={model}", "--set", f"data.train={data}",
              "--set", "data.eval=", "--set", "data.task_reward=", "--set", "train.max_steps=2", "--set", "train.batch_size=4",
              "--set", "train.save_every=0", "--set", "model.max_length=128")
    assert out.returncode == 0, out.stderr + out.stdout
    assert [r["step"] for r in (json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())] == [1, 2]


def test_kto_reads_unpaired_rows_from_a_dataset_folder(tmp_path):
    import datasets

    from engine.algorithms.kto import UnpairedRows
    from engine.chat_format import Encoder
    from tests.real_formats import write_tokenizer

    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "completion": [{"role": "assistant", "content": f"a{i}"}], "label": i % 2 == 0} for i in range(6)]
    (tmp_path / "kto" / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "kto" / "data" / "train-00000-of-00001.parquet"))  # trl-lib/kto-mix-14k's shape
    data = RunData(config_from_dict({"algorithm": "kto", "data": {"train": str(tmp_path / "kto"), "train_split": "train[:4]"}}))
    recs = data.records("train", "unpaired")
    assert [r.extra["label"] for r in recs] == [True, False, True, False] and recs[0].shape == "unpaired-conversational-completion"
    from mlx_lm.utils import load_tokenizer

    write_tokenizer(tmp_path / "tok", "chatml")
    tok = load_tokenizer(tmp_path / "tok")
    items = UnpairedRows(recs, Encoder(tok, 256))
    assert len(items) == 4 and items[1].desirable is False
    assert tok.decode(list(items[0].answer_ids), skip_special_tokens=False) == "a0<|im_end|>\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "completion": "c", "label": "yes"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: 'label' must be true or false, found 'yes'"):
        RunData(config_from_dict({"algorithm": "kto", "data": {"train": str(bad)}})).records("train", "unpaired")
