"""Test-session setup: fast BLAS on Linux, and isolated cache/config folders."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.blas import env_with_fast_blas  # noqa: E402

# User presets go to a throwaway folder; the built-in model is built once per machine.
os.environ.setdefault("RLHF_TUI_CONFIG", tempfile.mkdtemp(prefix="rlhf-tui-config-"))
os.environ.setdefault("RLHF_TUI_CACHE", str(Path(tempfile.gettempdir()) / "rlhf-tui-test-cache"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    """Restart pytest once with OpenBLAS preloaded (what the rlhf-tui command itself does)."""
    env = env_with_fast_blas()
    if env is None or "PYTEST_XDIST_WORKER" in os.environ:
        return
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.stop_global_capturing()  # give the new process the real stdout/stderr
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "pytest", *config.invocation_params.args], env)
