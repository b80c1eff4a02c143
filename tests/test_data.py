"""Data readers: the common shapes load; every malformed input names the file and line."""

from __future__ import annotations

import json

import pytest

from engine.builtin import builtin_model_path
from engine.data import load_pairs, load_prompts, load_records
from engine.errors import DataError
from tests.helpers import write_jsonl


@pytest.fixture(scope="module")
def tokenizer():
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(builtin_model_path())


def test_plain_pairs_mask_prompt_and_end_with_eos(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "sort: b a\n", "chosen": "a b", "rejected": "b a"}])
    (pair,) = load_pairs(str(f), tokenizer, 64)
    assert tokenizer.decode(list(pair.prompt_ids)) == "sort: b a\n"
    assert tokenizer.decode(list(pair.chosen_ids[:-1])) == "a b"
    assert pair.chosen_ids[-1] == tokenizer.eos_token_id == pair.rejected_ids[-1]
    assert pair.where == f"{f}:1"


def test_conversational_pairs_share_the_prompt(tmp_path, tokenizer):
    user = {"role": "user", "content": "sort: c a b"}
    row = {"chosen": [user, {"role": "assistant", "content": "a b c"}], "rejected": [user, {"role": "assistant", "content": "c a b"}]}
    f = write_jsonl(tmp_path / "c.jsonl", [row])
    (pair,) = load_pairs(str(f), tokenizer, 64)
    # the tiny tokenizer's chat template renders a user turn as "content\n" and an assistant turn as "content</s>"
    assert pair.prompt == "sort: c a b\n"
    assert pair.chosen == "a b c</s>" and pair.rejected == "c a b</s>"
    assert pair.chosen_ids[-1] == tokenizer.eos_token_id and pair.chosen_ids.count(tokenizer.eos_token_id) == 1


def test_json_list_and_mlx_lm_folder(tmp_path, tokenizer):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3
    (tmp_path / "all.json").write_text(json.dumps(rows))
    assert len(load_pairs(str(tmp_path / "all.json"), tokenizer, 64)) == 3
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "valid.jsonl", rows[:1])
    assert len(load_pairs(str(tmp_path), tokenizer, 64, "train")) == 3
    assert len(load_pairs(str(tmp_path), tokenizer, 64, "eval")) == 1


def test_long_pairs_are_truncated_from_the_prompt_left(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "l.jsonl", [{"prompt": "x" * 100 + "end", "chosen": "abc", "rejected": "abd"}])
    (pair,) = load_pairs(str(f), tokenizer, 20)
    assert len(pair.prompt_ids) + len(pair.chosen_ids) <= 20
    # templated (data.chat_template = auto): the built-in template ends the user turn with a newline
    assert tokenizer.decode(list(pair.prompt_ids)).endswith("end\n")


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (['{"prompt": "a", "chosen": "b", "rejected": "c"}', '{"prompt": "a", "chosen": "b"'], ":2: invalid JSON"),
        (['{"prompt": "a", "chosen": "b"}'], ":1: missing field 'rejected'"),
        (['[1, 2]'], ":1: expected a JSON object, found list"),
        (['{"prompt": "a", "chosen": 3, "rejected": "c"}'], ":1: 'chosen' must be a string or a list"),
        (['{"chosen": "b", "rejected": "c"}'], ":1: missing field 'prompt'"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, tokenizer, lines, fragment):
    f = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as err:
        load_pairs(str(f), tokenizer, 64)
    assert str(f) + fragment in str(err.value)


def test_empty_and_missing_files(tmp_path, tokenizer):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no examples"):
        load_pairs(str(tmp_path / "empty.jsonl"), tokenizer, 64)
    with pytest.raises(DataError, match="data file not found"):
        load_pairs(str(tmp_path / "nope.jsonl"), tokenizer, 64)
    with pytest.raises(DataError, match="folder has no train.jsonl"):
        load_pairs(str(tmp_path), tokenizer, 64)


def test_prompt_only_rows(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "sort: b a\n", "answer": "a b"}])
    (p,) = load_prompts(str(f), tokenizer, 64)
    assert p.text == "sort: b a\n" and p.extra == {"answer": "a b"}
    with pytest.raises(DataError, match=":1: missing field 'prompt'"):
        load_records(str(write_jsonl(tmp_path / "q.jsonl", [{"question": "x"}])), "prompt")


def test_bundled_data_is_what_the_builtin_generator_makes(tmp_path):
    from engine.builtin import write_builtin_data
    from engine.presets import builtin_dir

    write_builtin_data(tmp_path)
    for name in ("sort_train.jsonl", "sort_eval.jsonl", "sort_prompts.jsonl"):
        assert (tmp_path / name).read_text() == (builtin_dir() / "data" / name).read_text()


def test_bundled_pairs_mean_what_they_say():
    from engine.presets import builtin_dir

    rows = [json.loads(x) for x in (builtin_dir() / "data" / "sort_eval.jsonl").read_text().splitlines()]
    for r in rows:
        letters = r["prompt"].removeprefix("sort: ").split()
        assert r["chosen"].split() == sorted(letters)
        # rejected answers are the policy's mistakes: left as given, shuffled, one swap, a letter
        # missing, invented or repeated — never the sorted answer, always letters
        assert r["rejected"].split() != sorted(letters)
        assert all(len(w) == 1 and w.isalpha() and w.islower() for w in r["rejected"].split())
