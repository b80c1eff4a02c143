"""Fast matrix multiplies for MLX on Linux CPUs.

The ``mlx[cpu]`` wheel links the reference BLAS, about 30x slower than OpenBLAS for the
matrix multiplies training is made of. When Debian/Ubuntu's OpenBLAS is installed
(``apt-get install libopenblas0-pthread``), ``rlhf-tui`` restarts itself once with it
preloaded; when it is not, the console and the CLI say how to get it.
Set ``RLHF_TUI_NO_FAST_BLAS=1`` to opt out.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

MARKER = "RLHF_TUI_FAST_BLAS"
OPT_OUT = "RLHF_TUI_NO_FAST_BLAS"


def openblas_candidates() -> list[Path]:
    arch = platform.machine()
    triplet = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(arch, f"{arch}-linux-gnu")
    return [
        Path(f"/usr/lib/{triplet}/openblas-pthread/libblas.so.3"),
        Path(f"/usr/lib/{triplet}/openblas-openmp/libblas.so.3"),
        Path(f"/usr/lib/{triplet}/openblas-serial/libblas.so.3"),
        Path("/usr/lib64/libopenblas.so.0"),
        Path("/usr/lib/libopenblas.so.0"),
    ]


def openblas_library() -> Path | None:
    if sys.platform != "linux":
        return None
    for p in openblas_candidates():
        if p.exists():
            return p
    return None


def is_preloaded() -> bool:
    return "openblas" in os.environ.get("LD_PRELOAD", "")


def env_with_fast_blas(env: dict[str, str] | None = None) -> dict[str, str] | None:
    """A copy of ``env`` with OpenBLAS preloaded, or None when that is not possible or wanted."""
    env = dict(os.environ if env is None else env)
    lib = openblas_library()
    if lib is None or env.get(OPT_OUT) or env.get(MARKER) or "openblas" in env.get("LD_PRELOAD", ""):
        return None
    env["LD_PRELOAD"] = f"{lib} {env['LD_PRELOAD']}".strip() if env.get("LD_PRELOAD") else str(lib)
    env[MARKER] = "1"
    return env


def reexec_with_fast_blas(module_args: list[str]) -> None:
    """Replace this process with ``python <module_args>`` with OpenBLAS preloaded (if worth it)."""
    env = env_with_fast_blas()
    if env is None:
        return
    try:
        os.execve(sys.executable, [sys.executable, *module_args], env)
    except OSError:
        return  # keep running on the slow path rather than not at all


def blas_hint() -> str | None:
    """One line of advice for Linux CPU users without OpenBLAS, else None."""
    if sys.platform != "linux" or is_preloaded() or openblas_library() is not None:
        return None
    return (
        "MLX on this Linux CPU uses a slow reference BLAS; install OpenBLAS for ~30x faster "
        "training: sudo apt-get install libopenblas0-pthread (rlhf-tui then uses it automatically)"
    )
