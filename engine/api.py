"""Conveniences for driving the engine from scripts and notebooks.

Everything here is built on the same pieces the console and the CLI use (``Run``, its
events and its run directory), so a script produces the same run directory and metrics
as the console would.

    import engine
    run = engine.train("tiny-dpo", overrides=["train.max_steps=50"], out_dir="runs/dpo")
    rows = engine.read_metrics(run.directory.path)

Also here: loading a trained run back as an mlx-lm ``(model, tokenizer)`` pair, and
scoring preference pairs with a run's policy against its base (reference) model.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine.config import RunConfig
from engine.errors import RunDirError

if TYPE_CHECKING:
    from engine.events import Event
    from engine.run import Run


def use_fast_blas() -> None:
    """On Linux CPUs, restart this script once with OpenBLAS preloaded (about 30x faster training).

    Call it first thing in a script (``python my_script.py ...``); it does nothing on macOS,
    when OpenBLAS is not installed (``apt-get install libopenblas0-pthread``), when it is
    already loaded, in notebooks and other non-script processes, or with
    ``RLHF_TUI_NO_FAST_BLAS=1``. The ``rlhf-tui`` command does this by itself.
    """
    import sys

    from engine.blas import reexec_with_fast_blas

    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is None or script.suffix != ".py" or not script.is_file():
        return
    reexec_with_fast_blas(list(sys.argv))


def _as_config(config: RunConfig | str | Path, overrides: list[str] | None) -> RunConfig:
    from engine.config import apply_overrides
    from engine.presets import load_preset

    if isinstance(config, RunConfig):
        return apply_overrides(config, list(overrides or []))
    return load_preset(str(config), list(overrides or []))


def train(
    config: RunConfig | str | Path = "tiny-dpo",
    *,
    overrides: list[str] | None = None,
    out_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    on_event: Callable[[Event], None] | None = None,
    overwrite: bool = False,
) -> Run:
    """Train to the end and return the finished :class:`~engine.run.Run` (TRL's ``.train()``).

    ``config`` is a :class:`RunConfig`, a preset name or a preset path; ``overrides`` are
    ``"key=value"`` strings as on the command line. ``on_event`` is called on the training
    thread with every event and must return quickly. Ctrl-C (KeyboardInterrupt) cancels the
    run cleanly, after a checkpoint, and is then raised again.

    The returned run's ``status`` is ``"completed"``, ``"cancelled"`` or ``"failed"``;
    ``summary`` holds the final metrics (and ``error`` when it failed); ``directory`` is
    its :class:`~engine.rundir.RunDirectory`. Failures are reported there, not raised.
    An ``out_dir`` that already holds a run is refused (the run fails with a
    ``RunDirError`` naming it) unless ``overwrite=True``, which deletes that run's files first.
    """
    from engine.run import Run

    run = Run(_as_config(config, overrides), out_dir=out_dir, runs_root=runs_root, overwrite=overwrite)
    if on_event is not None:
        run.subscribe(on_event)
    interrupted: list[bool] = []
    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_sigint(signum: int, frame: Any) -> None:
            if interrupted:  # a second Ctrl-C stops waiting at once
                raise KeyboardInterrupt
            interrupted.append(True)
            run.cancel()  # the run stops after this step, with a checkpoint

        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        run.start()
        while run.running:
            run.join(0.2)
        run.join()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    return run


def stream(run: Run, *, start: bool = True, timeout: float | None = None) -> Iterator[Event]:
    """Start ``run`` in a background thread and yield its events until it ends.

    The last event is ``RunFinished``, ``RunCancelled`` or ``RunFailed``. Leaving the loop
    early (``break``, an exception) cancels the run and waits for its cancel checkpoint.
    ``timeout`` (seconds) raises ``queue.Empty`` when no event arrives for that long.
    Pass ``start=False`` when the run was started already (events before this call are lost).
    """
    from engine.events import TERMINAL_EVENTS

    q: queue.Queue[Event] = queue.Queue()
    run.subscribe(q.put)  # before start(): no event is missed
    if start:
        run.start()
    return _drain(run, q, timeout, TERMINAL_EVENTS)


def _drain(run: Run, q: queue.Queue[Event], timeout: float | None, terminal: tuple[type, ...]) -> Iterator[Event]:
    finished = False
    try:
        while True:
            event = q.get(timeout=timeout)
            if isinstance(event, terminal):
                finished = True
            yield event
            if finished:
                break
    finally:
        if not finished:
            run.cancel()
            run.join()
        else:
            run.join()


MetricsKind = Literal["train", "eval", "all"]


def read_metrics(run_dir: str | Path, kind: MetricsKind = "train") -> list[dict[str, Any]]:
    """Rows of a run's ``metrics.jsonl``: training rows (default), ``eval`` rows, or ``all``.

    Training rows hold ``step``, ``loss``, ``kl``, ``reward``, ``tokens_per_sec``,
    ``learning_rate``, ``grad_norm`` and the algorithm's TRL-named extras; evaluation rows
    hold ``step``, ``elapsed_s`` and ``eval/<name>`` keys. Values may be ``None``
    (e.g. SFT's ``kl``). Works while the run is still writing (a torn last line is skipped).
    """
    from engine.rundir import RunDirectory

    rows = RunDirectory.at(run_dir, must_exist=True).read_metrics()
    if kind == "all":
        return rows
    is_eval = [any(k.startswith("eval/") for k in r) for r in rows]
    if kind == "eval":
        return [r for r, e in zip(rows, is_eval, strict=True) if e]
    if kind == "train":
        return [r for r, e in zip(rows, is_eval, strict=True) if not e]
    raise ValueError(f"kind must be 'train', 'eval' or 'all', not {kind!r}")


# ---------------------------------------------------------------- trained models


def run_config(run_dir: str | Path) -> RunConfig:
    """The fully resolved config a run directory was trained with (its ``config.toml``)."""
    from engine.config import config_from_dict, load_toml

    path = Path(run_dir).expanduser() / "config.toml"
    if not path.exists():
        raise RunDirError(f"{Path(run_dir)}: not a run directory (no config.toml)")
    return config_from_dict(load_toml(path), source=str(path))


def adapter_path(run_dir: str | Path, step: int | None = None) -> Path:
    """The folder mlx-lm's ``--adapter-path`` takes for a run: its newest checkpoint, or
    checkpoint ``step`` (the one rule of :func:`engine.run_reader.resolve_weights`)."""
    from engine.run_reader import resolve_weights

    return resolve_weights(run_dir, step).folder


def base_model_path(run_dir: str | Path) -> str:
    """The base model of a run as mlx-lm's ``--model`` takes it (built-in models are built if missing)."""
    from engine.models import resolve_model_path

    return str(resolve_model_path(run_config(run_dir).model.path))


def load_trained(run_dir: str | Path, step: int | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a trained run (latest weights, or checkpoint ``step``): the
    model ``mlx_lm.load(base, adapter_path=run_dir)`` gives, on the base as the run trained
    it (quantized when it used ``model.quantize``) and with the weights it started from
    (``model.init_from``) applied first. ``engine.trained_model.load_trained_model`` also
    says which folder, step and base it loaded."""
    from engine.trained_model import load_trained_model

    model, tokenizer, _ = load_trained_model(run_dir, step)
    return model, tokenizer


# PairScore lives in engine.scoring (with the inspector's scoring); kept importable from here.
from engine.scoring import PairScore  # noqa: E402


def score_pairs(
    run_dir: str | Path,
    data: str | Path,
    *,
    step: int | None = None,
    beta: float | None = None,
    batch_size: int = 16,
    limit: int | None = None,
) -> list[PairScore]:
    """Score every pair of a preference file with a run's weights against its base model.

    ``data`` is any preference file or folder the engine reads (see docs/data.md); ``step``
    picks a checkpoint (default: the latest weights); ``beta`` defaults to the run's
    ``dpo.beta``. Each :class:`PairScore` holds the policy's and the reference's summed
    answer log-probs and the implicit reward margin; for a reward-model run it holds the
    reward model's scores (``rm_chosen``, ``rm_rejected``). The pair inspector scores with
    the same code (``engine.scoring``).
    """
    from engine.scoring import checkpoint_scorer, score, tokenize_pairs

    scorer = checkpoint_scorer(run_dir, step, beta)
    pairs = tokenize_pairs(scorer, data)
    if limit is not None:
        pairs = pairs[:limit]
    return score(scorer, pairs, batch_size=batch_size)
