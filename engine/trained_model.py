"""One loader for trained models: a base model, the trained weights it started from, then a
run's or checkpoint's own weights.

    model, tokenizer, info = load_trained_model("runs/tiny-dpo-...")          # newest checkpoint
    model, tokenizer, info = load_trained_model("runs/tiny-dpo-...", step=50)
    model, tokenizer, info = load_trained_model("runs/x/checkpoints/step-000050")

Which folder a path means (a run directory's newest checkpoint that checks out, checkpoint
``step``, or a checkpoint folder itself) is the one rule of :mod:`engine.run_reader`. The model
is built in the order training built it:

1. **the base**: the run's ``model.path`` (for a weights folder outside a run: the ``model``
   its ``adapter_config.json`` names) through mlx-lm, in ``dtype`` when one is asked for
   (``"auto"``: as stored), quantized as the run trained it when it used ``model.quantize``
   (mlx-lm's ``quantize_model``, which records it in the model config);
2. **where the run started** (``init_from`` in its ``adapter_config.json``, written from
   ``model.init_from``): that run's or checkpoint's weights baked in, its own ``init_from``
   first, and so on down the chain (:func:`apply_trained_weights`);
3. **the folder's own weights** through mlx-lm's ``load_adapters``: LoRA/DoRA layers attached
   and loaded (not fused: the model ``mlx_lm.load(base, adapter_path=...)`` gives), or all
   weights of a full fine-tune.

Training builds its starting model with the same steps 1–2 (:func:`load_start_model`, used by
``engine.models.load_policy``, PPO's value model and the labelling sampler). Every failure is
one line naming the folder: ``RunDirError`` for a path that means no weights (not found, not a
run, no checkpoint), ``ModelError`` for weights that cannot be read or do not fit the base.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.errors import ModelError
from engine.run_reader import ADAPTER_CONFIG, ADAPTERS, TrainedWeights, is_run_dir, resolve_weights

FINE_TUNE_TYPES = ("lora", "dora", "full")
Say = Callable[[str], None]


@dataclass(frozen=True)
class TrainedModelInfo:
    """What :func:`load_trained_model` loaded."""

    weights: TrainedWeights  # the folder the path means (engine.run_reader's rule), its run and step
    adapter_config: dict[str, Any]  # that folder's adapter_config.json
    base: str  # the base as mlx-lm was given it: a local folder or a Hub repo id
    base_path: Path  # the local folder the base was read from
    config: dict[str, Any]  # mlx-lm's model config ('quantization' when quantized here)
    init_from: tuple[Path, ...] = field(default=())  # weights folders baked in first, oldest first

    @property
    def folder(self) -> Path:
        return self.weights.folder

    @property
    def run_dir(self) -> Path | None:
        return self.weights.run_dir

    @property
    def step(self) -> int | None:
        return self.weights.step

    @property
    def fine_tune_type(self) -> str:
        return str(self.adapter_config.get("fine_tune_type", "lora"))


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """``folder``'s adapter_config.json, checked; a one-line ModelError naming what is wrong."""
    config_file, weights_file = folder / ADAPTER_CONFIG, folder / ADAPTERS
    if not folder.is_dir() or not config_file.is_file() or not weights_file.is_file():
        raise ModelError(f"{folder}: no trained weights here (a run directory or checkpoint folder holds {ADAPTERS} and {ADAPTER_CONFIG})")
    try:
        acfg = json.loads(config_file.read_text())
        kind = acfg.get("fine_tune_type", "lora")  # mlx-lm's default
    except (OSError, ValueError, AttributeError) as err:
        raise ModelError(f"{config_file}: not an mlx-lm adapter config ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if kind not in FINE_TUNE_TYPES:
        raise ModelError(f"{config_file}: fine_tune_type {kind!r} is none of {', '.join(FINE_TUNE_TYPES)}")
    if kind != "full" and not all(k in acfg for k in ("num_layers", "lora_parameters")):
        raise ModelError(f"{config_file}: not an mlx-lm adapter config (no num_layers / lora_parameters)")
    return acfg


def load_folder_weights(model: nn.Module, folder: Path, acfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """``folder``'s weights onto ``model`` as mlx-lm's ``load_adapters`` puts them (LoRA/DoRA
    layers attached and loaded, unfused; or all weights); returns its adapter config."""
    from mlx_lm.tuner.utils import load_adapters

    acfg = read_adapter_config(folder) if acfg is None else acfg
    weights_file = folder / ADAPTERS
    try:
        load_adapters(model, str(folder))
    except ValueError as err:
        text = str(err)
        if "incompatible" not in text.splitlines()[0]:  # e.g. more LoRA layers asked for than the model has
            raise ModelError(f"{folder / ADAPTER_CONFIG}: {text.splitlines()[0] if text else type(err).__name__}") from None
        lines = [x.strip() for x in text.splitlines()[1:] if x.strip()] or [text]  # mlx-lm lists every weight that does not fit
        raise ModelError(f"{weights_file}: {len(lines)} weights do not fit this base model (e.g. {lines[0]}); was it trained on another model?") from None
    except Exception as err:  # noqa: BLE001 - a truncated or foreign safetensors file
        raise ModelError(f"{weights_file}: cannot read ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return acfg


def _weights_folder(path: Path) -> Path:
    """An ``init_from`` path: a run directory means its newest checkpoint (engine.run_reader)."""
    path = Path(path).expanduser()
    return resolve_weights(path).folder if is_run_dir(path) else path


def apply_trained_weights(model: nn.Module, folder: Path, _seen: tuple[Path, ...] = ()) -> list[Path]:
    """Bake a run's or checkpoint's trained weights into ``model`` (``model.init_from``).

    ``folder`` is a run directory (its newest checkpoint) or a weights folder. The weights
    it started from (its adapter config's ``init_from``) go in first, recursively. Full
    weights are loaded as they are; LoRA/DoRA adapters are attached, loaded and fused into
    the base, so ``model`` has no adapter layers afterwards. Returns the folders applied,
    oldest first."""
    from mlx.utils import tree_unflatten

    folder = _weights_folder(folder)
    if folder.resolve() in _seen:
        raise ModelError(f"{folder}: its model.init_from chain comes back to itself ({' <- '.join(str(p) for p in (*_seen, folder.resolve()))})")
    try:
        acfg = read_adapter_config(folder)
    except ModelError as err:
        if (folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTERS).is_file():
            raise
        raise ModelError(f"{folder}: model.init_from needs a run directory or checkpoint folder with {ADAPTERS} and {ADAPTER_CONFIG}") from err
    applied = apply_trained_weights(model, Path(acfg["init_from"]), (*_seen, folder.resolve())) if acfg.get("init_from") else []
    load_folder_weights(model, folder, acfg)
    if acfg.get("fine_tune_type", "lora") != "full":
        fused = [(name, m.fuse()) for name, m in model.named_modules() if hasattr(m, "fuse")]
        model.update_modules(tree_unflatten(fused))
    mx.eval(model.parameters())
    return [*applied, folder]


def load_start_model(
    spec: str,
    *,
    dtype: str = "auto",
    quantize: str = "none",
    init_from: str | Path = "",
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Any, Path, dict[str, Any], list[Path]]:
    """Steps 1–2 of the module doc: ``(model, tokenizer, base path, mlx-lm config, init_from
    folders applied)`` — the base in ``dtype`` (unless quantized), quantized when ``quantize``
    is ``"4bit"``/``"8bit"`` and it is not already, then ``init_from``'s weights baked in."""
    from engine.models import is_quantized, load_base_with_config, quantize_base, set_model_dtype

    model, tokenizer, path, config = load_base_with_config(spec, trust_remote_code=trust_remote_code)
    if not is_quantized(model):
        set_model_dtype(model, dtype)
        if quantize != "none":
            config = quantize_base(model, int(quantize.removesuffix("bit")), config)
    applied = apply_trained_weights(model, Path(init_from)) if init_from else []
    return model, tokenizer, path, config, applied


def trained_quantize(path: str | Path) -> str:
    """``model.quantize`` of the run or checkpoint at ``path``: what its base was trained as."""
    weights = resolve_weights(path)
    if weights.run_dir is not None:
        from engine.api import run_config

        return run_config(weights.run_dir).model.quantize
    return _recorded_quantize(weights, read_adapter_config(weights.folder))


def _recorded_quantize(weights: TrainedWeights, acfg: dict[str, Any]) -> str:
    """The ``quantize`` a weights folder's adapter config records (written since runs record it)."""
    quantize = acfg.get("quantize", "none")
    if quantize not in ("none", "4bit", "8bit"):
        raise ModelError(f"{weights.folder / ADAPTER_CONFIG}: quantize = {quantize!r}; expected '4bit' or '8bit'")
    return quantize


def _base_spec(weights: TrainedWeights, acfg: dict[str, Any]) -> tuple[str, str, bool]:
    """(base model spec, model.quantize, trust_remote_code) of a weights folder: its run's
    config when it belongs to a run, else the ``model`` its adapter config names."""
    if weights.run_dir is not None:
        from engine.api import run_config
        from engine.models import resolve_model_path

        cfg = run_config(weights.run_dir)
        return str(resolve_model_path(cfg.model.path)), cfg.model.quantize, cfg.model.trust_remote_code
    base = acfg.get("model")
    if not isinstance(base, str) or not base:
        raise ModelError(f"{weights.folder / ADAPTER_CONFIG}: names no base model ('model') and the folder is not in a run directory")
    return base, _recorded_quantize(weights, acfg), False


def load_trained_model(
    path: str | Path,
    step: int | None = None,
    *,
    dtype: str = "auto",
    trust_remote_code: bool | None = None,
    progress: Say | None = None,
) -> tuple[nn.Module, Any, TrainedModelInfo]:
    """``(model, tokenizer, info)`` of a run directory (newest checkpoint, or ``step``) or a
    checkpoint folder: base, ``init_from`` chain, then its own weights (module doc).

    ``dtype`` ``"auto"`` keeps the base's stored dtype (what mlx-lm and fuse do); scoring asks
    for the run's ``model.dtype``. ``trust_remote_code`` defaults to the run's setting.
    ``progress(text)`` hears each phase. The model is in eval mode with nothing left lazy."""
    say = progress or (lambda text: None)
    weights = resolve_weights(path, step)  # RunDirError (one line) before anything loads
    acfg = read_adapter_config(weights.folder)
    spec, quantize, trust = _base_spec(weights, acfg)
    say("loading base model")
    model, tokenizer, base_path, config, applied = load_start_model(
        spec,
        dtype=dtype,
        quantize=quantize,
        init_from=acfg.get("init_from") or "",
        trust_remote_code=trust if trust_remote_code is None else trust_remote_code,
    )
    say("applying trained weights")
    load_folder_weights(model, weights.folder, acfg)
    model.eval()
    mx.eval(model.parameters())  # nothing lazy left: MLX streams end with the thread that made them
    info = TrainedModelInfo(weights, acfg, spec, base_path, config, tuple(applied))
    return model, tokenizer, info


__all__ = [
    "TrainedModelInfo",
    "apply_trained_weights",
    "load_folder_weights",
    "load_start_model",
    "load_trained_model",
    "read_adapter_config",
]
