"""Loading models through mlx-lm and attaching what is trained (LoRA, DoRA or all weights)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.config import RunConfig, resolve_path
from engine.errors import ModelError

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
QUANT_GROUP_SIZE = 64
Progress = Callable[[str, int, int], None]  # (phase name, done, total)
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
    model, tokenizer, path, _ = load_base_with_config(spec, trust_remote_code=trust_remote_code)
    return model, tokenizer, path


def load_base_with_config(spec: str, *, trust_remote_code: bool = False) -> tuple[nn.Module, Any, Path, dict[str, Any]]:
    """``(model, tokenizer, local folder, mlx-lm model config)`` of a base model; one-line ModelError."""
    from mlx_lm.utils import load

    from engine.cuda_settings import apply_cuda_defaults

    apply_cuda_defaults()  # before the first kernel: MLX reads it once
    where = resolve_model_path(spec)
    try:
        model, tokenizer, config = load(
            str(where),
            return_config=True,
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
    return model, tokenizer, path, config


def _hub_path(repo: str) -> str:
    try:
        from mlx_lm.utils import hf_repo_to_path

        return str(hf_repo_to_path(repo))
    except Exception:
        return repo


def adapter_config_for(cfg: RunConfig, num_layers: int) -> dict[str, Any]:
    layers = num_layers if cfg.model.lora_layers < 0 else min(cfg.model.lora_layers, num_layers)
    out: dict[str, Any] = {
        "fine_tune_type": cfg.model.adapter,
        "num_layers": layers,
        "lora_parameters": {
            "rank": cfg.model.lora_rank,
            "scale": cfg.model.lora_scale,
            "dropout": cfg.model.lora_dropout,
        },
    }
    if cfg.model.quantize != "none":  # a checkpoint copied out of its run still loads on the base it trained on
        out["quantize"] = cfg.model.quantize
    return out


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
    from engine.lora_precision import lora_in_activation_dtype

    lora_in_activation_dtype(model)  # a bf16 model's adapters compute in bf16, their weights stay float32


def set_model_dtype(model: nn.Module, name: str) -> None:
    """``model.dtype``: 'auto' keeps the checkpoint's floating dtype (bf16 stays bf16)."""
    if name != "auto" and not is_quantized(model):
        model.set_dtype(DTYPES[name])


def load_policy(cfg: RunConfig, progress: Progress | None = None) -> LoadedModel:
    """The model to train: the base (dtype, ``model.quantize``), the weights of
    ``model.init_from`` baked in (engine.trained_model), adapters attached as the config says."""
    from engine.trained_model import apply_trained_weights, load_start_model

    spec = resolve_path(cfg, cfg.model.path)
    if progress is not None and isinstance(resolve_model_path(spec), str):
        download_model(spec, progress)
    if cfg.model.quantize != "none" and cfg.model.adapter == "full":
        raise ModelError(f"model.quantize = {cfg.model.quantize!r} needs model.adapter = 'lora' or 'dora' (quantized weights cannot be trained directly)")
    model, tokenizer, path, _, _ = load_start_model(spec, dtype=cfg.model.dtype, quantize=cfg.model.quantize, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.adapter == "full" and is_quantized(model):
        raise ModelError(f"{path}: a quantized model can only be trained with model.adapter = 'lora' or 'dora'")
    acfg = adapter_config_for(cfg, len(model.layers))
    if cfg.model.init_from:
        start = Path(resolve_path(cfg, cfg.model.init_from))
        apply_trained_weights(model, start)
        acfg["init_from"] = str(start.resolve())
    attach_trainable(model, acfg)
    from engine import attention_split, lean_swiglu

    attention_split.install()  # CUDA: fused attention gradients at any query length
    lean_swiglu.install()  # SwiGLU MLPs keep two fewer arrays per layer for the backward pass
    return LoadedModel(model, tokenizer, path, acfg)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())


def trainable_count(model: nn.Module) -> int:
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


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


def quantize_base(model: nn.Module, bits: int, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quantize the base weights in place, as ``mlx_lm convert -q`` would (QLoRA's base);
    returns ``config`` with the quantization recorded (mlx-lm's ``quantize_model``)."""
    from mlx_lm.utils import quantize_model

    _, config = quantize_model(model, dict(config or {}), group_size=QUANT_GROUP_SIZE, bits=bits)
    return config


def download_model(repo: str, progress: Progress, poll_s: float = 0.5) -> Path:
    """Download a Hub model as mlx-lm would, reporting bytes and rate while it comes.

    The files' sizes come from the Hub's metadata; progress is the size of the repo's cache
    folder (finished and partial blobs), polled while ``snapshot_download`` runs. Offline or
    already cached: whatever ``snapshot_download`` finds, with no progress."""
    from huggingface_hub import HfApi, snapshot_download
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    total = 0
    try:
        info = HfApi().model_info(repo, files_metadata=True)
        total = sum(s.size or 0 for s in info.siblings or [] if _matches(s.rfilename, DEFAULT_ALLOW_PATTERNS))
    except Exception:  # noqa: BLE001 - offline or unknown: snapshot_download says what is wrong
        total = 0
    folder = _hub_cache_folder(repo)
    before = _folder_bytes(folder)
    result: dict[str, Any] = {}

    def fetch() -> None:
        try:
            result["path"] = Path(snapshot_download(repo, allow_patterns=DEFAULT_ALLOW_PATTERNS))
        except Exception as err:  # noqa: BLE001
            result["error"] = err

    watch_download(fetch, lambda: _folder_bytes(folder) - before, total, f"downloading {repo}", progress, poll_s)
    if "error" in result:
        err = result["error"]
        raise ModelError(f"{repo}: cannot download ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
    return result["path"]


def watch_download(fetch: Callable[[], None], done_bytes: Callable[[], int], total: int, name: str, progress: Progress, poll_s: float = 0.5) -> None:
    """Run ``fetch`` in a thread; every ``poll_s`` report (name with MB and MB/s, done MB, total MB)."""
    thread = threading.Thread(target=fetch, name="rlhf-tui-download", daemon=True)
    t0 = time.monotonic()
    thread.start()
    while thread.is_alive():
        thread.join(poll_s)
        done = max(done_bytes(), 0)
        rate = done / max(time.monotonic() - t0, 1e-6) / 2**20
        of = f" of {total / 2**20:,.0f}" if total else ""
        progress(f"{name}: {done / 2**20:,.1f}{of} MB at {rate:,.1f} MB/s", done // 2**20, max(total // 2**20, done // 2**20))


def _matches(name: str, patterns: list[str]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _hub_cache_folder(repo: str) -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def _folder_bytes(folder: Path) -> int:
    if not folder.exists():
        return 0
    total = 0
    for f in folder.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
        except OSError:
            continue
    return total
