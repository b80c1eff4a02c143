"""Property-based tests: parsers meet arbitrary input with clean errors, never a crash."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import config_from_dict, parse_override, schema
from engine.data import load_records
from engine.errors import ConfigError, DataError
from engine.rundir import RunDirectory, safe_name

KEYS = [s.key for s in schema()]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


@SETTINGS
@given(st.text(max_size=60))
def test_set_parser_only_raises_config_errors(text):
    try:
        key, _ = parse_override(text)
    except ConfigError as err:
        assert str(err)
    else:
        assert key in KEYS


@SETTINGS
@given(st.sampled_from(KEYS), st.text(max_size=30))
def test_any_text_for_a_real_key_is_accepted_or_named(key, value):
    try:
        parse_override(f"{key}={value}")
    except ConfigError as err:
        assert key in str(err)


@SETTINGS
@given(st.dictionaries(st.sampled_from([*KEYS, "train", "model", "dpo", "bogus"]) | st.text(max_size=8), toml_values, max_size=6))
def test_config_tables_only_raise_config_errors(data):
    nested: dict = {}
    for k, v in data.items():
        if "." in k:
            head, _, tail = k.partition(".")
            if not isinstance(nested.get(head), dict):
                nested[head] = {}
            nested[head][tail] = v
        else:
            nested[k] = v
    try:
        config_from_dict(nested, source="fuzz.toml")
    except ConfigError as err:
        assert str(err).startswith("fuzz.toml")


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from(["preference", "sft", "prompt"]), st.sampled_from([".jsonl", ".json"]))
def test_data_reader_only_raises_data_errors(blob, kind, suffix):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"data{suffix}"
        f.write_bytes(blob)
        try:
            records = load_records(str(f), kind)
        except DataError as err:
            assert str(f) in str(err)
        else:
            assert records


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "messages", "completion", "text"]),
                                toml_values, max_size=4), min_size=1, max_size=4), st.sampled_from(["preference", "sft", "prompt"]))
def test_json_rows_of_any_shape_only_raise_data_errors(rows, kind):
    import json

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "rows.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        try:
            load_records(str(f), kind)
        except DataError as err:
            assert f"{f}:" in str(err)


@SETTINGS
@given(st.text(max_size=40))
def test_run_names_never_escape_the_runs_folder(name):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "runs"
        run = RunDirectory.create(root, name)
        assert run.path.resolve().parent == root.resolve()
        assert "/" not in safe_name(name) and not safe_name(name).startswith(".")
