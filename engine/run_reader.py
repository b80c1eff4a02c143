"""Which trained weights a path means: one rule for every reader of run directories.

Scoring, sampling, fuse, side-by-side chat, PPO's reward model, ``model.init_from`` and the
public ``engine.adapter_path`` all take "a run directory or a checkpoint folder" and ask
the same question; :func:`resolve_weights` answers it, once:

* a **checkpoint folder** (``adapters.safetensors`` + ``adapter_config.json``): itself; it
  belongs to a run when it sits in that run's ``checkpoints/``;
* a **run directory** (``config.toml``), with ``step``: that checkpoint (an error names the
  steps there are); without: its newest complete checkpoint (``checkpoints/step-N`` with
  ``trainer_state.json``, which is written last); only when it has none, the adapters at its
  root (a run copied without its checkpoints). The root's copy is a mirror of the newest
  checkpoint written after it, so it can only be older, never newer: the checkpoint wins;
* anything else: :class:`RunDirError` in one line (not found / not a run directory / no
  weights yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import RunDirError

ADAPTERS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class TrainedWeights:
    folder: Path  # holds adapters.safetensors + adapter_config.json (mlx-lm's adapter path)
    run_dir: Path | None  # the run they come from, when known
    step: int | None  # the checkpoint's step; None for a run root's copy or a loose folder


def is_weights_folder(folder: Path) -> bool:
    return (folder / ADAPTERS).is_file() and (folder / ADAPTER_CONFIG).is_file()


def is_run_dir(folder: Path) -> bool:
    return (folder / "config.toml").is_file()


def resolve_weights(path: str | Path, step: int | None = None) -> TrainedWeights:
    """The weights ``path`` (a run directory or checkpoint folder) means; see the module doc."""
    from engine.rundir import CHECKPOINT_RE, RunDirectory

    p = Path(path).expanduser()
    if not p.exists():
        raise RunDirError(f"{p}: not found (give a run directory or one of its checkpoints/step-N folders)")
    if not is_run_dir(p) and is_weights_folder(p):
        run = p.parent.parent if p.parent.name == "checkpoints" and is_run_dir(p.parent.parent) else None
        m = CHECKPOINT_RE.match(p.name)
        own = int(m.group(1)) if m and run is not None else None
        if step is not None and own != step:
            raise RunDirError(f"{p}: is a checkpoint folder{f' of step {own}' if own is not None else ''}; give its run directory to choose step {step}")
        return TrainedWeights(p, run, own)
    if not is_run_dir(p):
        raise RunDirError(f"{p}: not a run directory (no config.toml)")
    directory = RunDirectory(p)
    done = directory.checkpoint_dirs()
    if step is not None:
        for s, folder in done:
            if s == step:
                return TrainedWeights(folder, p, s)
        have = ", ".join(str(s) for s, _ in done) or "none"
        raise RunDirError(f"{p}: no checkpoint for step {step} (checkpoints: {have})")
    if done:
        s, folder = done[-1]
        return TrainedWeights(folder, p, s)
    if is_weights_folder(p):
        return TrainedWeights(p, p, None)
    raise RunDirError(f"{p}: no weights yet (no checkpoint has been written)")
