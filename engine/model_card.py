"""``RUN_DIR/README.md``: a Hugging Face model card for every finished run.

YAML front matter (``base_model`` and ``datasets`` when they are Hub ids, ``library_name:
mlx``, tags with the algorithm and the adapter), then what the run used (base model,
algorithm, data with split and rows, key hyperparameters), its final metrics and how to
load it with mlx-lm, so the run directory can be pushed to the Hub as it is.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from engine.config import RunConfig, resolve_path

PANEL = ("loss", "kl", "reward", "tokens_per_sec", "grad_norm", "learning_rate")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _yaml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML scalar


def _algorithm_title(name: str) -> str:
    try:
        from engine.algorithms.registry import spec

        return spec(name).long_title
    except Exception:  # noqa: BLE001 - an unknown name still gets a card
        return name.upper()


def _is_hub(spec: str) -> bool:
    try:
        from engine.data_sources import is_hub_id

        return is_hub_id(spec)
    except ImportError:
        return False


def _data_line(spec: str, split: str, rows: int | None) -> str:
    if not spec:
        return "—"
    where = f"[`{spec}`](https://huggingface.co/datasets/{spec})" if _is_hub(spec) else f"`{spec}`"
    count = f"{rows:,} rows" if rows is not None else "rows not counted"
    return f"{where}, split `{split}`, {count}"


def render_model_card(
    cfg: RunConfig,
    summary: dict[str, Any],
    *,
    run_dir: str | Path,
    base_model: str,
    rows: dict[str, int | None] | None = None,
) -> str:
    """The card's Markdown text. ``base_model`` is what adapter_config.json names (a Hub id or
    a local folder); ``rows`` holds the ``train`` / ``eval`` example counts when known."""
    rows = rows or {}
    algo = cfg.algorithm
    train_spec = resolve_path(cfg, cfg.data.train)
    eval_spec = resolve_path(cfg, cfg.data.eval)
    train_split = getattr(cfg.data, "train_split", "train")
    eval_split = getattr(cfg.data, "eval_split", "test")
    base_is_hub = _is_hub(base_model)
    datasets = sorted({s.split("[", 1)[0] for s in (train_spec, eval_spec) if s and _is_hub(s)})
    tags = ["mlx", "rlhf-tui", algo, cfg.model.adapter]

    front = ["---"]
    if base_is_hub:
        front.append(f"base_model: {_yaml_str(base_model)}")
    front += ["library_name: mlx", "pipeline_tag: text-generation", "tags:", *[f"- {_yaml_str(t)}" for t in tags]]
    if datasets:
        front += ["datasets:", *[f"- {_yaml_str(d)}" for d in datasets]]
    front.append("---")

    run_dir = Path(run_dir)
    status = summary.get("status", "completed")
    steps, max_steps = summary.get("steps"), summary.get("max_steps", cfg.train.max_steps)
    base_link = f"[`{base_model}`](https://huggingface.co/{base_model})" if base_is_hub else f"`{base_model}`"
    model_spec = cfg.model.path if cfg.model.path.startswith("builtin:") else ""
    adapter = cfg.model.adapter
    if adapter == "full":
        adapter_text = "all weights (full fine-tuning)"
    else:
        layers = "all" if cfg.model.lora_layers < 0 else str(cfg.model.lora_layers)
        adapter_text = f"{adapter.upper()} rank {cfg.model.lora_rank}, scale {_fmt(cfg.model.lora_scale)}, dropout {_fmt(cfg.model.lora_dropout)}, layers {layers}"
    t = cfg.train
    out = [
        *front,
        "",
        f"# {run_dir.name}",
        "",
        f"A {_algorithm_title(algo)} ({algo}) fine-tune of {base_link} trained with rlhf-tui on MLX: "
        f"{steps} of {max_steps} steps ({status}).",
        "",
        "## Training",
        "",
        "| | |",
        "| --- | --- |",
        f"| base model | {base_link}{f' ({model_spec})' if model_spec else ''} |",
        f"| algorithm | `{algo}` |",
        f"| trained weights | {adapter_text} |",
        *([f"| base quantization | {cfg.model.quantize} at load (`model.quantize`): the adapters fit the quantized base, which `rlhf-tui fuse` and `rlhf-tui chat` rebuild; plain `mlx_lm.load(base, adapter_path=...)` does not |"]
          if getattr(cfg.model, "quantize", "none") != "none" else []),
        f"| train data | {_data_line(train_spec, train_split, rows.get('train'))} |",
        f"| eval data | {_data_line(eval_spec, eval_split, rows.get('eval'))} |",
        f"| steps | {steps} of {max_steps}, batch size {t.batch_size}, world size {summary.get('world_size', 1)} |",
        f"| learning rate | {_fmt(t.learning_rate)} ({t.lr_schedule}, {t.warmup_steps} warm-up steps), optimizer {t.optimizer}, weight decay {_fmt(t.weight_decay)} |",
        f"| max length | {cfg.model.max_length} tokens, dtype {cfg.model.dtype} |",
        f"| seed | {t.seed} |",
    ]
    section = getattr(cfg, algo, None)
    if dataclasses.is_dataclass(section):
        out += ["", f"Hyperparameters of `[{algo}]`:", ""]
        out += [f"- `{algo}.{k}` = {_fmt(v)}" for k, v in dataclasses.asdict(section).items()]
    final = summary.get("final_metrics") or {}
    final_eval = summary.get("final_eval") or {}
    out += ["", "## Results", ""]
    metric_rows = [(k, final.get(k)) for k in PANEL if k in final]
    metric_rows += [(k, v) for k, v in final.items() if k not in PANEL and k not in ("elapsed_s", "step_time_s", "memory_active_gb", "memory_peak_gb") and isinstance(v, int | float)]
    metric_rows += [(k, v) for k, v in final_eval.items()]
    if metric_rows:
        out += ["Final values (last training step; `eval/` rows on the held-out data):", "", "| metric | value |", "| --- | --- |"]
        out += [f"| `{k}` | {_fmt(v)} |" for k, v in metric_rows]
    else:
        out.append("No metrics were logged.")
    out += [
        "",
        "Every logged step is in `metrics.jsonl`; the resolved config in `config.toml`.",
        "",
        "## Use it with mlx-lm",
        "",
        "This folder is an mlx-lm adapter path (`adapters.safetensors` + `adapter_config.json`):",
        "",
        "```python",
        "from mlx_lm import generate, load",
        "",
        f"model, tokenizer = load({base_model!r}, adapter_path={str(run_dir)!r})",
        'print(generate(model, tokenizer, prompt="...", max_tokens=64))',
        "```",
        "",
        "Or fuse the weights into one standalone model folder and use it as any mlx-lm model:",
        "",
        "```sh",
        f"rlhf-tui fuse {run_dir} --out {run_dir.name}-fused",
        f'mlx_lm.generate --model {run_dir.name}-fused --prompt "..."',
        "```",
        "",
        f"`rlhf-tui chat {run_dir}` compares its answers with the base model's, side by side.",
        "",
    ]
    return "\n".join(out)


def count_rows(algorithm: Any) -> dict[str, int | None]:
    """How many train / eval examples the algorithm loaded (None where it keeps none)."""
    out: dict[str, int | None] = {}
    for split, names in (("train", ("train", "prompts")), ("eval", ("eval", "eval_prompts"))):
        out[split] = None
        for name in names:
            data = getattr(algorithm, name, None)
            if data is not None and hasattr(data, "__len__"):
                out[split] = len(data)
                break
    return out


def write_model_card(run: Any) -> Path | None:
    """Write ``README.md`` into a finished run's directory (rank 0); returns its path."""
    from engine.fuse import base_model_id
    from engine.rundir import atomic_write_text

    if run.directory is None:
        return None
    cfg = run.config
    loaded = run.ctx.policy.path if run.ctx is not None else resolve_path(cfg, cfg.model.path)
    base = base_model_id(resolve_path(cfg, cfg.model.path), loaded)
    rows = count_rows(run.algorithm) if run.algorithm is not None else {}
    path = run.directory.path / "README.md"
    atomic_write_text(path, render_model_card(cfg, run.summary, run_dir=run.directory.path, base_model=base, rows=rows))
    return path


__all__ = ["count_rows", "render_model_card", "write_model_card"]
