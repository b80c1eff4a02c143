"""MLX settings that the engine chooses on an NVIDIA GPU (MLX's CUDA backend).

MLX's CUDA backend records kernels into CUDA graphs and holds every input a graph binds until
the graph runs. A graph is closed after ``MLX_MAX_OPS_PER_BUFFER`` kernels or once the arrays
it binds pass ``MLX_MAX_MB_PER_BUFFER`` megabytes (1000 on an H100). With that default, a DPO
step on a 1.04B Llama (bf16, 8 pairs, prompts <=512 and answers <=256 tokens) peaked at 21.4 GB with LoRA and 25.0 GB in
full fine-tuning (bf16 Adam state); with 50 MB the same steps peaked at 13.6 and 17.5 GB, at
1.05-1.13x and 1.00x the step time, and a GRPO step (8 x 8 x 256 new tokens) went from 2.41 s / 49.8 GB to
2.17 s / 39.0 GB (H100, 2026-12-07; docs/performance.md, ``benchmarks/cuda_buffer_memory.py``).

MLX reads the variable once a process; set after ``import mlx.core`` and before the model
loaded, it took effect (measured the same peaks as when exported). A value the user exported
wins.
"""

from __future__ import annotations

import os

CUDA_MB_PER_BUFFER = "50"


def apply_cuda_defaults() -> bool:
    """Set the engine's CUDA graph size unless the environment names one. True on CUDA."""
    from engine.batching import on_cuda

    if not on_cuda():
        return False
    os.environ.setdefault("MLX_MAX_MB_PER_BUFFER", CUDA_MB_PER_BUFFER)
    return True
