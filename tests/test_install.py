"""Installed from the wheel (as `uv tool install .` does), rlhf-tui works away from the checkout.

The wheel is built with `uv build`, installed without dependencies into a fresh virtual
environment that borrows the project's installed dependencies (so the test needs no
network), and run from an empty folder: the built-in presets, their data and the built-in
model must all be found inside the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.skipif(shutil.which("uv") is None, reason="needs the uv command to build the wheel")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(["uv", "build", "--wheel", "--out-dir", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "hatchling" in build.stderr and ("network" in build.stderr or "dns" in build.stderr.lower()):
        pytest.skip("uv could not fetch the build backend (offline)")
    assert build.returncode == 0, build.stderr
    (path,) = out.glob("rlhf_tui-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed; dependencies come from this interpreter's site-packages."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    made = subprocess.run(["uv", "venv", "--quiet", "--python", sys.executable, str(venv)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    # a path entry, not a site dir: the checkout's editable .pth inside it is not processed
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run(["uv", "pip", "install", "--quiet", "--no-deps", "--python", str(py), str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr
    return venv


def run_installed(venv: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_the_wheel_carries_the_presets_and_their_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in (ROOT / "presets").glob("*.toml"):
        assert f"engine/_presets/{preset.name}" in names
    for data in (ROOT / "presets" / "data").glob("*.jsonl"):
        assert f"engine/_presets/data/{data.name}" in names
    assert "rlhf_tui/cli.py" in names and "engine/run.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "rlhf-tui = rlhf_tui.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_command_finds_its_presets_away_from_the_checkout(installed, tmp_path):
    where = run_installed(installed, "python", "-c", "import engine.presets as p; print(p.__file__); print(p.builtin_dir())", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    module_file, presets_dir = where.stdout.split()
    assert Path(module_file).is_relative_to(installed) and not Path(module_file).is_relative_to(ROOT)
    assert Path(presets_dir) == Path(module_file).parent / "_presets"

    listed = run_installed(installed, "rlhf-tui", "presets", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "tiny-dpo" in listed.stdout and "built-in" in listed.stdout


def test_installed_command_trains_on_the_bundled_data(installed, tmp_path):
    # tiny-sft: the same bundled model and data as the default, without DPO's reference pass
    out = run_installed(
        installed,
        "rlhf-tui", "run", "tiny-sft", "--out", "run", "--quiet",
        "--set", "train.max_steps=1", "--set", "train.batch_size=4", "--set", "data.max_eval_examples=8",
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 1
    config = (tmp_path / "run" / "config.toml").read_text()
    assert "_presets/data/sort_train.jsonl" in config  # the data came from inside the package
