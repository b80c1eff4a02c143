"""Presets and data are data: nothing in them runs code, and remote code stays off by default."""

from __future__ import annotations

import pytest

from engine.config import RunConfig, field_spec
from engine.errors import ConfigError
from engine.presets import load_preset


def test_trust_remote_code_is_off_unless_asked_for():
    assert RunConfig().model.trust_remote_code is False
    for name in ("tiny-dpo", "tiny-sft", "qwen2.5-0.5b-dpo", "llama-3.2-1b-dpo"):
        assert load_preset(name).model.trust_remote_code is False
    assert "opt in" in field_spec("model.trust_remote_code").help


def test_trust_remote_code_reaches_mlx_lm(monkeypatch, tmp_path):
    """The flag the user set is what mlx-lm's loader receives (and nothing else turns it on)."""
    import mlx_lm.utils

    from engine import models

    seen = {}

    def fake_load(path, tokenizer_config=None, trust_remote_code=False, **kw):
        seen["trust"] = trust_remote_code
        seen["tok"] = tokenizer_config
        raise RuntimeError("stop here")

    monkeypatch.setattr(mlx_lm.utils, "load", fake_load)
    for flag in (False, True):
        with pytest.raises(Exception, match="stop here"):
            models.load_base("builtin:tiny-sorter", trust_remote_code=flag)
        assert seen == {"trust": flag, "tok": {"trust_remote_code": flag}}


def test_a_preset_cannot_name_python_to_run(tmp_path):
    p = tmp_path / "evil.toml"
    p.write_text('algorithm = "dpo"\n[train]\noptimizer = "__import__(\'os\').system(\'touch pwned\')"\n')
    with pytest.raises(ConfigError, match="train.optimizer"):
        load_preset(str(p))
    assert not (tmp_path / "pwned").exists()
