"""Fuse a run's adapters into its base model: a standalone mlx-lm model folder.

    fuse_run("runs/tiny-dpo-...", "fused/", step=None, dequantize=False)

The run is loaded by engine.trained_model's one loader (the base through ``mlx_lm.load``,
quantized as the run trained it, any ``model.init_from`` weights the run started from, then
the run's weights with mlx-lm's own ``load_adapters``), LoRA/DoRA
layers are fused with their own ``fuse(dequantize=...)`` as ``mlx_lm fuse`` does, and the
folder is written by ``mlx_lm.utils.save``: weights, ``config.json``, the tokenizer with its
chat template. ``mlx_lm.load(out)`` and ``mlx_lm.generate`` use it as it is.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import ModelError, RunDirError

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def base_model_id(model_path: str, loaded_path: Path | str) -> str:
    """How an adapter config names its base: the Hub repo id when the model came from the Hub
    (so the folder works on another machine), else the local folder it was loaded from."""
    from engine.models import resolve_model_path

    if model_path and not model_path.startswith("builtin:"):
        try:
            where = resolve_model_path(model_path)
        except ModelError:
            return str(loaded_path)
        if isinstance(where, str):
            return where  # a repo id, e.g. mlx-community/Qwen2.5-0.5B-Instruct-4bit
    return str(loaded_path)


def weights_step(run_dir: str | Path, folder: Path) -> int | None:
    """The step of the weights in ``folder``: a checkpoint's trainer_state.json, or for the
    run's own latest weights the steps in its summary.json (None when neither says)."""
    for path, key in ((folder / "trainer_state.json", "step"), (Path(run_dir) / "summary.json", "steps")):
        try:
            step = json.loads(path.read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


def _nothing(phase: str, done: int, total: int) -> None:
    pass


def fuse_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    step: int | None = None,
    dequantize: bool = False,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out``: the run's base with its trained weights (latest, or checkpoint ``step``)
    fused in. Returns ``out``. ``progress(phase, done, total)`` is called along the way."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, save

    from engine.api import adapter_path, run_config
    from engine.trained_model import load_trained_model

    report = progress or _nothing
    out = Path(out).expanduser()
    folder = adapter_path(run_dir, step)  # RunDirError names the checkpoints there are
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(f"{out}: folder exists and is not empty; pick another --out (or remove it)")
        shutil.rmtree(out)
    if out.resolve() == Path(run_dir).expanduser().resolve() or Path(run_dir).expanduser().resolve() in out.resolve().parents:
        raise RunDirError(f"{out}: the fused model must not go inside the run directory it is made from")
    cfg = run_config(run_dir)
    phases = {"loading base model": 0, "applying trained weights": 1}
    model, tokenizer, info = load_trained_model(folder, progress=lambda phase: report(phase, phases[phase], 4))
    config, base, acfg = info.config, info.base, info.adapter_config
    report("fusing", 2, 4)
    fused = [(name, m.fuse(dequantize=dequantize)) for name, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    mx.eval(model.parameters())
    report("saving", 3, 4)
    save(out, base, model, tokenizer, config, donate_model=False)
    _write_provenance(out, run_dir, folder, acfg, cfg.model.path, base)
    report("done", 4, 4)
    return out


def _write_provenance(out: Path, run_dir: str | Path, folder: Path, acfg: dict[str, Any], spec: str, base: str) -> None:
    """``fused_from.json``: which run, checkpoint and base the fused weights came from."""
    step = weights_step(run_dir, folder)
    info = {
        "run_dir": str(Path(run_dir).expanduser().resolve()),
        "adapters": str(folder.resolve()),
        "step": step,
        "fine_tune_type": acfg.get("fine_tune_type"),
        "base_model": base_model_id(spec, base),
    }
    (out / "fused_from.json").write_text(json.dumps(info, indent=2) + "\n")


__all__ = ["base_model_id", "fuse_run", "weights_step"]
