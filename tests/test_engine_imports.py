"""The engine never loads Textual or Rich: each module imports cleanly in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for p in (ROOT / "engine").rglob("*.py")
    if p.name != "__main__.py"
)


def test_found_the_engine_modules():
    assert "engine.run" in MODULES and "engine.algorithms.dpo" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_engine_module_does_not_load_textual_or_rich(module):
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "bad = [m for m in ('textual', 'rich') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{module} loaded {out.stdout.strip()}"
