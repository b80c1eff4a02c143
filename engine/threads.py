"""MLX and Python threads."""

from __future__ import annotations


def release_mlx_streams() -> None:
    """Call at the end of a thread that ran MLX work.

    MLX gives each thread its own streams; a thread that ends without destroying them
    makes the process abort at exit ("terminate called without an active exception").
    """
    import mlx.core as mx

    try:
        mx.synchronize()
        mx.clear_streams()
    except Exception:  # noqa: BLE001 - best effort at thread exit
        pass
