"""Config schema, presets and --set overrides: every bad value is named with what is allowed."""

from __future__ import annotations

import pytest

from engine.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    diff,
    load_config_file,
    parse_override,
    schema,
)
from engine.errors import ConfigError
from engine.presets import list_presets, load_preset


def test_every_field_has_help_and_constraints():
    specs = schema()
    assert len(specs) > 40
    for s in specs:
        assert s.help, s.key
        assert s.type in (int, float, str, bool, tuple), s.key  # tuple: a list of choices (report.to)
        if s.type in (int, float) and s.choices is None:
            assert s.min is not None and s.max is not None, f"{s.key} has no range"
        assert s.min is None or s.max is None or s.min <= s.default <= s.max, s.key


def test_preset_keys_every_preset_understands():
    keys = {s.key for s in schema()}
    for k in ("algorithm", "model.path", "model.adapter", "data.train", "data.eval", "train.max_steps",
              "train.batch_size", "train.learning_rate", "train.seed"):
        assert k in keys


def test_all_builtin_presets_load():
    names = {p.name for p in list_presets() if p.builtin}
    assert {"tiny-dpo", "tiny-sft"} <= names
    for p in list_presets():
        assert not p.error, p.error
        cfg = load_preset(str(p.path))
        assert cfg.algorithm == p.algorithm


def test_override_types_are_parsed():
    cfg = load_preset("tiny-dpo", ["train.max_steps=7", "dpo.beta=0.5", "model.adapter=lora", "data.shuffle=false"])
    assert cfg.train.max_steps == 7 and cfg.dpo.beta == 0.5 and cfg.model.adapter == "lora" and cfg.data.shuffle is False
    assert diff(cfg, load_preset("tiny-dpo")) == {
        "model.adapter": ("full", "lora"),
        "data.shuffle": (True, False),
        "train.max_steps": (100, 7),
        "dpo.beta": (0.3, 0.5),
    }


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("train.lr=3", ["unknown key 'train.lr'"]),
        ("train.max_steps=ten", ["train.max_steps", "'ten'", "an integer"]),
        ("train.max_steps=0", ["train.max_steps", "[1, 10000000]"]),
        ("dpo.loss_type=magic", ["dpo.loss_type", "'magic'", "'sigmoid'", "'ipo'"]),
        ("model.adapter=qlora", ["model.adapter", "one of 'lora', 'dora', 'full'"]),
        ("data.shuffle=maybe", ["data.shuffle", "true or false"]),
        ("algorithm=ppo2", ["algorithm", "'grpo'"]),
        ("train.max_steps", ["expected key=value"]),
    ],
)
def test_bad_overrides_name_key_value_and_allowed(override, fragments):
    with pytest.raises(ConfigError) as err:
        parse_override(override)
    for f in fragments:
        assert f in str(err.value)


def test_unknown_key_in_a_preset_names_file_and_key(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('algorithm = "dpo"\n[train]\nmax_stepz = 3\n')
    with pytest.raises(ConfigError) as err:
        load_config_file(p)
    assert str(p) in str(err.value) and "train.max_stepz" in str(err.value) and "train.max_steps" in str(err.value)


def test_toml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text('algorithm = "dpo"\n[train\nmax_steps = 3\n')
    with pytest.raises(ConfigError) as err:
        load_config_file(p)
    assert str(p) in str(err.value) and "line 2" in str(err.value)


def test_wrong_type_in_toml(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text('[train]\nlearning_rate = "fast"\n')
    with pytest.raises(ConfigError, match=r"train.learning_rate = 'fast'.*a number"):
        load_config_file(p)


def test_section_must_be_a_table():
    with pytest.raises(ConfigError, match=r"\[train\] must be a table"):
        config_from_dict({"train": 3})


def test_unknown_preset_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown preset 'tiny-dp'.*did you mean 'tiny-dpo'"):
        load_preset("tiny-dp")


def test_apply_overrides_keeps_other_values():
    cfg = apply_overrides(RunConfig(), ["train.seed=3"])
    assert cfg.train.seed == 3 and cfg.train.batch_size == RunConfig().train.batch_size
