"""Loading models through mlx-lm and attaching what is trained (LoRA, DoRA or all weights)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.config import RunConfig, resolve_path
from engine.errors import ModelError

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
REQUIRED_FILES = ("config.json",)


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    path: Path
    adapter_config: dict[str, Any]

    @property
    def is_adapter(self) -> bool:
        return self.adapter_config["fine_tune_type"] != "full"


def resolve_model_path(spec: str) -> Path | str:
    """A local folder (checked), a built-in model (built on first use) or a hub repo id."""
    if not spec:
        raise ModelError("model.path is empty; give a local mlx-lm folder, a repo id or builtin:tiny-sorter")
    if spec.startswith("builtin:"):
        from engine.builtin import builtin_model_path

        return builtin_model_path(spec.split(":", 1)[1])
    p = Path(spec).expanduser()
    looks_local = p.is_absolute() or spec.startswith((".", "~")) or p.exists() or spec.count("/") != 1
    if not looks_local:
        return spec  # a Hugging Face repo id: mlx-lm downloads (or finds it in the HF cache)
    if not p.exists():
        raise ModelError(f"{p}: model folder not found")
    if not p.is_dir():
        raise ModelError(f"{p}: expected a model folder (config.json, *.safetensors, tokenizer files), found a file")
    missing = [f for f in REQUIRED_FILES if not (p / f).exists()]
    if not list(p.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if not ((p / "tokenizer.json").exists() or (p / "tokenizer.model").exists() or (p / "tokenizer_config.json").exists()):
        missing.append("tokenizer.json")
    if missing:
        raise ModelError(f"{p}: incomplete model folder, missing {', '.join(missing)}")
    return p


def load_base(spec: str, *, trust_remote_code: bool = False) -> tuple[nn.Module, Any, Path]:
    from mlx_lm.utils import load

    where = resolve_model_path(spec)
    try:
        model, tokenizer = load(
            str(where),
            tokenizer_config={"trust_remote_code": trust_remote_code},
            trust_remote_code=trust_remote_code,
        )
    except ModelError:
        raise
    except Exception as err:  # mlx-lm raises many kinds; the user needs the path and the reason
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(where, str):
            raise ModelError(f"{where}: cannot load this repo id (offline, or not an mlx-lm model?): {reason}") from None
        raise ModelError(f"{where}: cannot load model: {reason}") from None
    path = Path(where) if not isinstance(where, str) else Path(_hub_path(where))
    return model, tokenizer, path


def _hub_path(repo: str) -> str:
    try:
        from mlx_lm.utils import hf_repo_to_path

        return str(hf_repo_to_path(repo))
    except Exception:
        return repo


def adapter_config_for(cfg: RunConfig, num_layers: int) -> dict[str, Any]:
    layers = num_layers if cfg.model.lora_layers < 0 else min(cfg.model.lora_layers, num_layers)
    return {
        "fine_tune_type": cfg.model.adapter,
        "num_layers": layers,
        "lora_parameters": {
            "rank": cfg.model.lora_rank,
            "scale": cfg.model.lora_scale,
            "dropout": cfg.model.lora_dropout,
        },
    }


def attach_trainable(model: nn.Module, adapter_config: dict[str, Any]) -> None:
    """Freeze the base and add adapters, or unfreeze everything for full fine-tuning."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    kind = adapter_config["fine_tune_type"]
    if kind == "full":
        model.unfreeze()
        return
    model.freeze()
    linear_to_lora_layers(
        model,
        adapter_config["num_layers"],
        adapter_config["lora_parameters"],
        use_dora=(kind == "dora"),
    )


def load_policy(cfg: RunConfig) -> LoadedModel:
    """The model to train, with adapters attached as the config says."""
    model, tokenizer, path = load_base(resolve_path(cfg, cfg.model.path), trust_remote_code=cfg.model.trust_remote_code)
    dtype = DTYPES[cfg.model.dtype]
    if not _is_quantized(model):
        model.set_dtype(dtype)
    elif cfg.model.adapter == "full":
        raise ModelError(f"{path}: a quantized model can only be trained with model.adapter = 'lora' or 'dora'")
    acfg = adapter_config_for(cfg, len(model.layers))
    if cfg.model.init_from:
        start = Path(resolve_path(cfg, cfg.model.init_from))
        apply_trained_weights(model, start)
        acfg["init_from"] = str(start.resolve())
    attach_trainable(model, acfg)
    return LoadedModel(model, tokenizer, path, acfg)


def _is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())


def trainable_count(model: nn.Module) -> int:
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def write_adapter_config(folder: Path, adapter_config: dict[str, Any], base_path: Path) -> None:
    data = dict(adapter_config)
    data["model"] = str(base_path)
    (folder / "adapter_config.json").write_text(json.dumps(data, indent=2))


def apply_trained_weights(model: nn.Module, folder: Path) -> None:
    """Bake a run's or checkpoint's trained weights into ``model`` (model.init_from).

    ``folder`` holds ``adapters.safetensors`` + ``adapter_config.json`` (a run directory or a
    checkpoint). Full weights are loaded as they are; LoRA/DoRA adapters are attached, loaded
    and fused into the base. A folder that itself started from other weights (its
    ``adapter_config.json`` has ``init_from``) has those applied first.
    """
    from mlx.utils import tree_flatten, tree_unflatten

    folder = Path(folder).expanduser()
    config_file, weights_file = folder / "adapter_config.json", folder / "adapters.safetensors"
    if not folder.is_dir() or not config_file.exists() or not weights_file.exists():
        raise ModelError(f"{folder}: model.init_from needs a run directory or checkpoint folder with adapters.safetensors and adapter_config.json")
    try:
        acfg = json.loads(config_file.read_text())
        kind = acfg["fine_tune_type"]
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{config_file}: not an mlx-lm adapter config ({err})") from None
    if acfg.get("init_from"):
        apply_trained_weights(model, Path(acfg["init_from"]))
    if kind != "full":
        attach_trainable(model, acfg)
    weights = mx.load(str(weights_file))
    known = {k for k, _ in tree_flatten(model.parameters())}
    unknown = sorted(set(weights) - known)
    if unknown:
        raise ModelError(f"{weights_file}: {len(unknown)} weights do not fit this base model (e.g. {unknown[0]}); was it trained on another model?")
    model.load_weights(list(weights.items()), strict=False)
    if kind != "full":
        fused = [(name, m.fuse()) for name, m in model.named_modules() if hasattr(m, "fuse")]
        model.update_modules(tree_unflatten(fused))
    mx.eval(model.parameters())


def load_tokenizer_for(cfg: RunConfig) -> Any:
    """The run's tokenizer alone (no weights): a Hub model downloads only its tokenizer files."""
    from mlx_lm.utils import load_tokenizer

    where = resolve_model_path(resolve_path(cfg, cfg.model.path))
    if isinstance(where, str):
        try:
            from huggingface_hub import snapshot_download

            where = Path(snapshot_download(where, allow_patterns=["tokenizer*", "*.json", "*.jinja", "*.model", "*.tiktoken", "*.txt"]))
        except Exception as err:  # noqa: BLE001 - offline, unknown repo, ...
            raise ModelError(f"{cfg.model.path}: cannot get the tokenizer ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    eos = None
    config_file = Path(where) / "config.json"
    if config_file.exists():
        try:
            eos = json.loads(config_file.read_text()).get("eos_token_id")
        except (OSError, ValueError):
            eos = None
    try:
        return load_tokenizer(Path(where), {"trust_remote_code": cfg.model.trust_remote_code}, eos_token_ids=[eos] if isinstance(eos, int) else eos)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{where}: cannot load the tokenizer ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
