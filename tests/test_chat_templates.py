"""What the model sees, token by token, for every data shape with real chat-template formats.

Tokenizers in the formats users bring (tests/real_formats.py): ChatML with <|im_end|> as the
EOS (Qwen2.5, SmolLM2), Llama 3 headers with <|begin_of_text|> and <|eot_id|>, and a base
tokenizer with no template. Expected texts are written out here by hand.
"""

from __future__ import annotations

import pytest

from engine.data import load_completions, load_pairs, load_prompts
from engine.errors import ConfigError, DataError
from tests.helpers import write_jsonl
from tests.real_formats import write_tokenizer

Q, A, B = "Sort b a", "a b", "b a"
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
CHATML_PROMPT = SYSTEM + f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"
LLAMA_PROMPT = f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{Q}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


SHAPES = {
    "plain": {"prompt": Q, "chosen": A, "rejected": B},
    "conversational": {"prompt": [user(Q)], "chosen": [assistant(A)], "rejected": [assistant(B)]},
    "conversational-implicit": {"chosen": [user(Q), assistant(A)], "rejected": [user(Q), assistant(B)]},
    "prompt+conversations": {  # HuggingFaceH4/ultrafeedback_binarized
        "prompt": Q, "chosen": [user(Q), assistant(A)], "rejected": [user(Q), assistant(B)],
        "prompt_id": "abc", "messages": [user(Q), assistant(A)], "score_chosen": 8.0, "score_rejected": 3.0,
    },
    "messages-prompt": {"prompt": [user(Q)], "chosen": A, "rejected": B},
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from mlx_lm.utils import load_tokenizer

    out = {}
    for fmt in ("chatml", "llama3", "base"):
        folder = tmp_path_factory.mktemp(fmt)
        write_tokenizer(folder, fmt)
        out[fmt] = load_tokenizer(folder)
    return out


def one_pair(tmp_path, tok, row, **kw):
    (pair,) = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", [row])), tok, 256, **kw)
    return pair


def text(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_chatml_every_shape_renders_one_turn_ending_once(tmp_path, tokenizers, shape):
    tok = tokenizers["chatml"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    pair = one_pair(tmp_path, tok, SHAPES[shape])
    assert text(tok, pair.prompt_ids) == CHATML_PROMPT  # the question once, never inside the answer
    assert text(tok, pair.chosen_ids) == f"{A}<|im_end|>\n"
    assert text(tok, pair.rejected_ids) == f"{B}<|im_end|>\n"
    for answer in (pair.chosen_ids, pair.rejected_ids):
        assert list(answer).count(im_end) == 1  # not "A<|im_end|>\n<|im_end|>"
    assert pair.chosen == f"{A}<|im_end|>\n"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_llama3_every_shape_has_one_bos_and_ends_with_eot(tmp_path, tokenizers, shape):
    tok = tokenizers["llama3"]
    bos, eot = tok.convert_tokens_to_ids("<|begin_of_text|>"), tok.convert_tokens_to_ids("<|eot_id|>")
    pair = one_pair(tmp_path, tok, SHAPES[shape])
    assert text(tok, pair.prompt_ids) == LLAMA_PROMPT
    assert list(pair.prompt_ids).count(bos) == 1 and pair.prompt_ids[0] == bos
    assert text(tok, pair.chosen_ids) == f"{A}<|eot_id|>"
    assert list(pair.chosen_ids).count(eot) == 1 and pair.chosen_ids[-1] == eot


def test_plain_rows_follow_data_chat_template(tmp_path, tokenizers):
    tok = tokenizers["chatml"]
    eos = tok.eos_token_id
    never = one_pair(tmp_path, tok, SHAPES["plain"], chat_template="never")
    assert text(tok, never.prompt_ids) == Q  # kept as given
    assert text(tok, never.chosen_ids) == f"{A}<|im_end|>" and never.chosen_ids[-1] == eos  # EOS appended once
    always = one_pair(tmp_path, tok, SHAPES["plain"], chat_template="always")
    assert text(tok, always.prompt_ids) == CHATML_PROMPT
    # llama 3 plain, never templated: the tokenizer's own BOS, then EOS appended
    llama = one_pair(tmp_path, tokenizers["llama3"], SHAPES["plain"], chat_template="never")
    assert text(tokenizers["llama3"], llama.prompt_ids) == f"<|begin_of_text|>{Q}"


def test_base_tokenizer_without_a_template(tmp_path, tokenizers):
    tok = tokenizers["base"]
    pair = one_pair(tmp_path, tok, SHAPES["plain"])
    assert text(tok, pair.prompt_ids) == Q
    assert text(tok, pair.chosen_ids) == f"{A}<|endoftext|>"
    with pytest.raises(DataError, match=r"d\.jsonl:1: conversational rows need a chat template.*data.chat_template_file"):
        one_pair(tmp_path, tok, SHAPES["conversational"])
    with pytest.raises(ConfigError, match="data.chat_template = 'always'"):
        one_pair(tmp_path, tok, SHAPES["plain"], chat_template="always")


def test_a_template_file_serves_a_tokenizer_without_one(tmp_path, tokenizers):
    from tests.real_formats import CHATML_TEMPLATE

    tok = tokenizers["base"]
    (tmp_path / "chatml.jinja").write_text(CHATML_TEMPLATE)
    pair = one_pair(tmp_path, tok, SHAPES["conversational"], template_file=str(tmp_path / "chatml.jinja"))
    assert text(tok, pair.prompt_ids) == CHATML_PROMPT
    # the template ends the turn with <|im_end|>, which is not this tokenizer's EOS: EOS is added
    assert text(tok, pair.chosen_ids) == f"{A}<|im_end|>\n<|endoftext|>"
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    with pytest.raises(ConfigError, match=r"data.chat_template_file = .*bad.jinja.*line 1"):
        one_pair(tmp_path, tok, SHAPES["conversational"], template_file=str(tmp_path / "bad.jinja"))


def test_h4_prompt_that_is_not_a_user_turn_is_an_error(tmp_path, tokenizers):
    row = dict(SHAPES["prompt+conversations"], prompt="a different question")
    with pytest.raises(DataError, match=r"d\.jsonl:1: the string 'prompt' is not one of the conversations' user turns"):
        one_pair(tmp_path, tokenizers["chatml"], row)


def test_mixed_shapes_in_one_file_name_the_row(tmp_path, tokenizers):
    rows = [SHAPES["plain"], SHAPES["conversational"]]
    with pytest.raises(DataError, match=r"d\.jsonl:2: row shape 'conversational' differs from the first row"):
        load_pairs(str(write_jsonl(tmp_path / "d.jsonl", rows)), tokenizers["chatml"], 256)
    with pytest.raises(DataError, match=r"d\.jsonl:1: 'chosen' and 'rejected' must both be strings or both be messages"):
        one_pair(tmp_path, tokenizers["chatml"], {"prompt": Q, "chosen": A, "rejected": [assistant(B)]})


def test_sft_and_prompt_only_shapes_with_chatml(tmp_path, tokenizers):
    tok = tokenizers["chatml"]
    rows = {
        "messages": {"messages": [user(Q), assistant(A)]},
        "prompt+completion": {"prompt": Q, "completion": A},
        "conversational-completion": {"prompt": [user(Q)], "completion": [assistant(A)]},
    }
    for name, row in rows.items():
        (c,) = load_completions(str(write_jsonl(tmp_path / f"{name}.jsonl", [row])), tok, 256)
        assert text(tok, c.prompt_ids) == CHATML_PROMPT, name
        assert text(tok, c.completion_ids) == f"{A}<|im_end|>\n", name
    (raw,) = load_completions(str(write_jsonl(tmp_path / "text.jsonl", [{"text": "plain text"}])), tok, 256)
    assert text(tok, raw.completion_ids) == "plain text<|im_end|>"  # raw text is never templated
    (p,) = load_prompts(str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": Q, "answer": A}])), tok, 256)
    assert p.text == CHATML_PROMPT and text(tok, p.prompt_ids) == CHATML_PROMPT and p.extra == {"answer": A}
