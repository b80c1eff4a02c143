"""The algorithm registry is the one list of algorithms: config, presets, docs and the
console agree with it, and it loads without MLX."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from engine.algorithms.registry import DATA_SHAPES, REGISTRY, algorithm_class, sections_for, spec
from engine.config import ALGORITHMS, RunConfig, schema
from engine.presets import builtin_dir
from tests.helpers import ROOT


def test_config_offers_exactly_the_registered_algorithms():
    assert ALGORITHMS == tuple(a.name for a in REGISTRY)
    assert dict((s.key, s.choices) for s in schema())["algorithm"] == ALGORITHMS
    assert len(set(ALGORITHMS)) == len(ALGORITHMS)


@pytest.mark.parametrize("algo", REGISTRY, ids=lambda a: a.name)
def test_each_algorithm_has_its_section_class_preset_and_docs(algo):
    cfg = RunConfig()
    for section in sections_for(algo.name):
        assert dataclasses.is_dataclass(getattr(cfg, section)), f"RunConfig has no [{section}] section"
    cls = algorithm_class(algo.name)
    assert cls.name == algo.name
    assert algo.data in DATA_SHAPES
    assert (builtin_dir() / f"tiny-{algo.name}.toml").exists(), f"no built-in preset tiny-{algo.name}"
    docs = (ROOT / "docs" / "algorithms.md").read_text()
    assert f'algorithm = "{algo.name}"' in docs


def test_unknown_names_are_refused():
    with pytest.raises(KeyError):
        spec("nope")
    assert sections_for("nope") == ()


def test_the_registry_and_config_load_without_mlx():
    code = "import sys, engine.config, engine.algorithms; print(any(m.startswith('mlx') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_console_lists_come_from_the_registry():
    from rlhf_tui.monitoring import ON_POLICY
    from rlhf_tui.screens.editor import SECTION_TITLES

    assert set(ON_POLICY) == {a.name for a in REGISTRY if a.on_policy}
    for a in REGISTRY:
        assert SECTION_TITLES[a.section] == a.title
