"""The model that writes completions for labelling: base, a run's checkpoint, or a live run.

``resolve_model_choice(spec)`` turns what a person types into a model to load:

* a base model: ``builtin:tiny-sorter``, an mlx-lm folder or a Hugging Face repo id;
* a run directory (``runs/<id>``, holding ``config.toml``): its latest adapters/weights;
* a checkpoint folder (``runs/<id>/checkpoints/step-N``, or any folder with
  ``adapters.safetensors`` + ``adapter_config.json``): those weights baked into the base as
  ``model.init_from`` starts a run from them (engine.trained_model: their own ``init_from``
  chain first, LoRA/DoRA fused).

``snapshot_live_run(run, folder)`` saves a training run's current weights as such a folder,
so completions (and a later training round) can start from them.

``CompletionWriter.complete(prompts, sampling)`` samples ``sampling.n`` completions per prompt
in one batch (``engine.rollout.generate``: KV cache, per-row EOS).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx

from engine.errors import ModelError
from engine.run_reader import is_weights_folder, resolve_weights

if TYPE_CHECKING:
    from engine.run import Run


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    n: int = 2  # completions per prompt

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 10.0:
            raise ValueError(f"temperature = {self.temperature}: must be in [0, 10]")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p = {self.top_p}: must be in (0, 1]")
        if not 1 <= self.max_tokens <= 32768:
            raise ValueError(f"max_tokens = {self.max_tokens}: must be in [1, 32768]")
        if not 2 <= self.n <= 4:
            raise ValueError(f"n = {self.n}: compare 2 to 4 completions per prompt")

    def provenance(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("n")
        return d


@dataclass(frozen=True)
class ModelChoice:
    """Which weights write the completions, and how to train on from them."""

    spec: str  # what the person typed
    base: str  # model.path for mlx-lm (or the engine's builtin:<name>)
    adapter_dir: str | None  # folder with adapters.safetensors + adapter_config.json, or None
    run_dir: str | None = None  # the run the weights come from, when known

    @property
    def checkpoint(self) -> str | None:
        return self.adapter_dir

    def describe(self) -> str:
        return self.base if self.adapter_dir is None else f"{self.base} + {self.adapter_dir}"


def resolve_model_choice(spec: str) -> ModelChoice:
    """A base model, a run directory or a checkpoint folder (see the module doc)."""
    spec = spec.strip()
    folder = Path(spec).expanduser()
    if folder.is_dir() and (folder / "config.toml").exists() and not (folder / "config.json").exists():
        from engine.api import adapter_path, run_config

        cfg = run_config(folder)
        return ModelChoice(spec, cfg.model.path if cfg.model.path.startswith("builtin:") else _absolute_base(cfg), str(adapter_path(folder).resolve()), str(folder.resolve()))
    if folder.is_dir() and is_weights_folder(folder):
        try:
            base = json.loads((folder / "adapter_config.json").read_text())["model"]
        except (OSError, ValueError, KeyError):
            raise ModelError(f"{folder / 'adapter_config.json'}: has no 'model' entry naming the base model") from None
        run_dir = resolve_weights(folder).run_dir  # the run it sits in, when it is one of its checkpoints
        if run_dir is not None:
            from engine.api import run_config

            cfg = run_config(run_dir)
            if cfg.model.path.startswith("builtin:"):
                base = cfg.model.path
        return ModelChoice(spec, str(base), str(folder.resolve()), str(run_dir.resolve()) if run_dir else None)
    from engine.models import resolve_model_path

    resolve_model_path(spec)  # checks a local folder, builds a built-in model
    return ModelChoice(spec, spec, None)


def _absolute_base(cfg: Any) -> str:
    from engine.config import resolve_path

    return resolve_path(cfg, cfg.model.path)


def snapshot_live_run(run: Run, folder: str | Path) -> ModelChoice:
    """Save a training run's current weights (taken between steps) as a checkpoint folder."""
    from engine.rundir import atomic_write_text

    if run.ctx is None:
        raise ModelError("the run has not loaded its model yet; wait for its first step")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    weights = run.weights_snapshot()
    tmp = out / ".adapters.tmp.safetensors"
    mx.save_safetensors(str(tmp), weights)
    tmp.replace(out / "adapters.safetensors")
    acfg = dict(run.ctx.policy.adapter_config)
    acfg["model"] = str(run.ctx.policy.path)
    atomic_write_text(out / "adapter_config.json", json.dumps(acfg, indent=2))
    run_dir = str(run.directory.path) if run.directory else None
    base = run.config.model.path
    if not base.startswith("builtin:"):
        base = _absolute_base(run.config)
    return ModelChoice(f"live run {run_dir} at step {run.step}", base, str(out.resolve()), run_dir)


class CompletionWriter:
    """A loaded model that samples completions for prompts."""

    def __init__(self, choice: ModelChoice, max_length: int = 512) -> None:
        from engine.trained_model import load_start_model, trained_quantize

        self.choice = choice
        # the base (quantized as those weights were trained on it) with the chosen weights
        # baked in, as model.init_from starts a run from them
        quantize = trained_quantize(choice.adapter_dir) if choice.adapter_dir else "none"
        self.model, self.tokenizer, _, _, _ = load_start_model(choice.base, quantize=quantize, init_from=choice.adapter_dir or "")
        self.model.eval()
        from engine.data import Encoder

        self.encoder = Encoder(self.tokenizer, max_length)
        eos = getattr(self.tokenizer, "eos_token_ids", None) or {self.tokenizer.eos_token_id}
        self.eos_ids = {int(e) for e in eos}
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0

    def prompt_text(self, prompt: Any) -> str:
        return self.encoder.render_prompt(prompt).prompt

    def complete(
        self,
        prompts: Sequence[Any],
        sampling: Sampling,
        *,
        check: Callable[[], None] | None = None,
        retries: int = 3,
    ) -> list[list[str]]:
        """``sampling.n`` completions for every prompt (text or chat messages), sampled in one batch.

        When all completions of a prompt come out identical, that prompt is sampled again
        (up to ``retries`` times): identical answers teach nothing.
        """
        ids = [list(self.encoder.render_prompt(p).prompt_ids) for p in prompts]
        out = self._sample(ids, sampling, check)
        for _ in range(retries):
            same = [i for i, texts in enumerate(out) if len(set(texts)) == 1]
            if not same:
                break
            again = self._sample([ids[i] for i in same], sampling, check)
            for i, texts in zip(same, again, strict=True):
                out[i] = texts
        return out

    def _sample(self, ids: list[list[int]], sampling: Sampling, check: Callable[[], None] | None) -> list[list[str]]:
        rows = [p for p in ids for _ in range(sampling.n)]
        tokens = _generate(self.model, rows, sampling, self.eos_ids, self.pad_id, check)
        texts = [self.tokenizer.decode([t for t in row if t not in self.eos_ids]) for row in tokens]
        return [texts[i * sampling.n : (i + 1) * sampling.n] for i in range(len(ids))]


def _generate(model: Any, rows: list[list[int]], sampling: Sampling, eos_ids: set[int], pad_id: int, check: Callable[[], None] | None) -> list[list[int]]:
    from engine.rollout import generate

    rollout = generate(
        model,
        rows,
        max_new_tokens=sampling.max_tokens,
        eos_ids=eos_ids,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        pad_id=pad_id,
        check=check,
    )
    return rollout.completion_ids
