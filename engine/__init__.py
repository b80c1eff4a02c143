"""rlhf-tui's training engine: SFT, reward models, DPO, PPO and GRPO on MLX.

The public API, importable from ``engine`` directly. A DPO run on the built-in default::

    import engine

    config = engine.load_preset("tiny-dpo", overrides=["train.max_steps=50"])
    run = engine.Run(config, out_dir="runs/dpo")
    for event in engine.stream(run):          # starts the run in a background thread
        if isinstance(event, engine.StepMetrics):
            print(event.step, event.metrics["loss"], event.metrics["rewards/accuracies"])
    print(run.summary["status"], engine.read_metrics(run.directory.path)[-1])

Or in one call, TRL style: ``run = engine.train("tiny-dpo", out_dir="runs/dpo")``.

Configs
    ``load_preset(name_or_path, overrides)``, ``list_presets()``, ``RunConfig`` (typed
    dataclasses: ``config.train.max_steps``...), ``config_from_dict``, ``set_value`` /
    ``get_value`` (validated dotted keys), ``apply_overrides``, ``to_dict``, ``schema()``
    (every key with type, default, range and help), ``save_user_preset``.
Runs
    ``Run(config, out_dir=..., runs_root=...)`` with ``start()`` / ``run()`` / ``join()``,
    ``pause()``, ``resume()``, ``cancel()``, ``subscribe(fn)``, ``status``, ``step``,
    ``summary``, ``directory``; ``train(...)``; ``stream(run)``; ``resume_run(run_dir)``;
    ``use_fast_blas()`` (Linux CPUs: restart a script with OpenBLAS preloaded).
Events
    ``RunStarted``, ``PhaseChanged``, ``StepMetrics``, ``EvalMetrics``, ``LogLine``,
    ``Sample``, ``CheckpointSaved``, ``RunPaused``, ``RunResumed``, ``Alert``,
    ``RunFinished``, ``RunCancelled``, ``RunFailed`` (frozen dataclasses; ``Event`` base).
Results
    ``read_metrics(run_dir, kind)``, ``RunDirectory``, ``run_config(run_dir)``,
    ``load_trained(run_dir)`` (an mlx-lm ``(model, tokenizer)``), ``adapter_path``,
    ``base_model_path``, ``score_pairs(run_dir, data)`` -> ``PairScore`` list.
Errors
    ``EngineError`` and its subclasses ``ConfigError``, ``DataError``, ``ModelError``,
    ``RunDirError``, ``NonFiniteError``.

Importing ``engine`` is cheap: each name loads its module (and MLX) on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # configs and presets
    "RunConfig": "engine.config",
    "FieldSpec": "engine.config",
    "schema": "engine.config",
    "field_spec": "engine.config",
    "config_from_dict": "engine.config",
    "load_config_file": "engine.config",
    "apply_overrides": "engine.config",
    "set_value": "engine.config",
    "get_value": "engine.config",
    "to_dict": "engine.config",
    "diff": "engine.config",
    "ALGORITHMS": "engine.config",
    "load_preset": "engine.presets",
    "list_presets": "engine.presets",
    "find_preset": "engine.presets",
    "save_user_preset": "engine.presets",
    "PresetInfo": "engine.presets",
    "DEFAULT_PRESET": "engine.presets",
    # runs
    "Run": "engine.run",
    "resume_run": "engine.run",
    "train": "engine.api",
    "stream": "engine.api",
    "use_fast_blas": "engine.api",
    # events
    "Event": "engine.events",
    "RunStarted": "engine.events",
    "PhaseChanged": "engine.events",
    "StepMetrics": "engine.events",
    "EvalMetrics": "engine.events",
    "LogLine": "engine.events",
    "Sample": "engine.events",
    "CheckpointSaved": "engine.events",
    "RunPaused": "engine.events",
    "RunResumed": "engine.events",
    "Alert": "engine.events",
    "RunFinished": "engine.events",
    "RunCancelled": "engine.events",
    "RunFailed": "engine.events",
    "TERMINAL_EVENTS": "engine.events",
    # results
    "RunDirectory": "engine.rundir",
    "read_metrics": "engine.api",
    "run_config": "engine.api",
    "adapter_path": "engine.api",
    "base_model_path": "engine.api",
    "load_trained": "engine.api",
    "score_pairs": "engine.api",
    "PairScore": "engine.api",
    # errors
    "EngineError": "engine.errors",
    "ConfigError": "engine.errors",
    "DataError": "engine.errors",
    "ModelError": "engine.errors",
    "RunDirError": "engine.errors",
    "NonFiniteError": "engine.errors",
}

__all__ = [
    "ALGORITHMS",
    "Alert",
    "CheckpointSaved",
    "ConfigError",
    "DEFAULT_PRESET",
    "DataError",
    "EngineError",
    "EvalMetrics",
    "Event",
    "FieldSpec",
    "LogLine",
    "ModelError",
    "NonFiniteError",
    "PairScore",
    "PhaseChanged",
    "PresetInfo",
    "Run",
    "RunCancelled",
    "RunConfig",
    "RunDirError",
    "RunDirectory",
    "RunFailed",
    "RunFinished",
    "RunPaused",
    "RunResumed",
    "RunStarted",
    "Sample",
    "StepMetrics",
    "TERMINAL_EVENTS",
    "adapter_path",
    "apply_overrides",
    "base_model_path",
    "config_from_dict",
    "diff",
    "field_spec",
    "find_preset",
    "get_value",
    "list_presets",
    "load_config_file",
    "load_preset",
    "load_trained",
    "read_metrics",
    "resume_run",
    "run_config",
    "save_user_preset",
    "schema",
    "score_pairs",
    "set_value",
    "stream",
    "to_dict",
    "train",
    "use_fast_blas",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and editors; at run time names load lazily
    from engine.api import (
        PairScore,
        adapter_path,
        base_model_path,
        load_trained,
        read_metrics,
        run_config,
        score_pairs,
        stream,
        train,
        use_fast_blas,
    )
    from engine.config import (
        ALGORITHMS,
        FieldSpec,
        RunConfig,
        apply_overrides,
        config_from_dict,
        diff,
        field_spec,
        get_value,
        load_config_file,
        schema,
        set_value,
        to_dict,
    )
    from engine.errors import (
        ConfigError,
        DataError,
        EngineError,
        ModelError,
        NonFiniteError,
        RunDirError,
    )
    from engine.events import (
        TERMINAL_EVENTS,
        Alert,
        CheckpointSaved,
        EvalMetrics,
        Event,
        LogLine,
        PhaseChanged,
        RunCancelled,
        RunFailed,
        RunFinished,
        RunPaused,
        RunResumed,
        RunStarted,
        Sample,
        StepMetrics,
    )
    from engine.presets import (
        DEFAULT_PRESET,
        PresetInfo,
        find_preset,
        list_presets,
        save_user_preset,
    )
    from engine.run import Run, resume_run
    from engine.rundir import RunDirectory
