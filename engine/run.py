"""A training run: the loop in a background thread, pause/cancel, events, checkpoints, resume.

    run = Run(load_preset("tiny-dpo"))
    run.subscribe(print)          # called on the engine thread with each Event
    run.start(); run.join()       # or run.run() to train in the calling thread
    run.summary["status"]         # "completed" | "cancelled" | "failed"

The run never calls UI code; subscribers must return quickly (post a message, put on a
queue). ``Run.events()`` iterates over events from another thread.
"""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from engine import events as ev
from engine.algorithms import Algorithm, TrainContext, algorithm_class
from engine.compile import enable_grad_checkpoint
from engine.config import RunConfig, config_from_dict, load_toml, resolved, to_dict
from engine.config import diff as config_diff
from engine.data import check_run_data, data_kind
from engine.dir_lock import DirLock
from engine.distributed import World, init_world
from engine.errors import Cancelled, ConfigError, EngineError, RunDirError
from engine.models import load_policy
from engine.rundir import RunDirectory
from engine.threads import release_mlx_streams

Subscriber = Callable[[ev.Event], None]
PANEL_KEYS = ("loss", "kl", "reward", "tokens_per_sec")


def wire_model_memory() -> int:
    """On Metal, keep up to the GPU's recommended working set wired (resident), as mlx-lm's
    generate and train do, so big weights are not paged out between steps. Returns the limit
    set in bytes (0 where there is nothing to wire: CPU, CUDA, or a Metal without the key)."""
    try:
        if not mx.metal.is_available():
            return 0
        limit = int(mx.device_info().get("max_recommended_working_set_size", 0))
    except Exception:  # noqa: BLE001 - an older MLX without device_info
        return 0
    if limit > 0:
        mx.set_wired_limit(limit)
    return limit


class Run:
    """One training run. Create it, then ``start()`` (thread) or ``run()`` (blocking)."""

    def __init__(
        self,
        config: RunConfig,
        *,
        out_dir: str | Path | None = None,
        runs_root: str | Path = "runs",
        resume_dir: str | Path | None = None,
        world: World | None = None,
        overwrite: bool = False,
    ) -> None:
        self.config = config
        self._overwrite = overwrite  # a new run may replace an earlier run in out_dir
        self._dir_notes: list[str] = []
        self._out_dir = Path(out_dir) if out_dir else None
        self._runs_root = Path(runs_root)
        self._resume_dir = Path(resume_dir) if resume_dir else None
        self._world = world
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._thread: threading.Thread | None = None
        self.status = "created"  # running | paused | completed | cancelled | failed
        self.step = 0
        self.directory: RunDirectory | None = None
        self.summary: dict[str, Any] = {}
        self.last_metrics: dict[str, Any] = {}
        self.last_eval: dict[str, Any] = {}
        self.algorithm: Algorithm | None = None
        self.ctx: TrainContext | None = None
        self._started_at = 0.0
        self._weights_lock = threading.Lock()  # held while weights change (a step)

    # -------------------------------------------------------------- control (any thread)

    def subscribe(self, fn: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(fn)

    def events(self, timeout: float | None = None) -> Iterator[ev.Event]:
        """Yield events until the run ends. Subscribe before ``start()`` to see them all."""
        q: queue.Queue[ev.Event] = queue.Queue()
        self.subscribe(q.put)
        while True:
            item = q.get(timeout=timeout)
            yield item
            if isinstance(item, ev.TERMINAL_EVENTS):
                return

    def start(self) -> threading.Thread:
        if self._thread is not None:
            raise RuntimeError("run already started")
        self._thread = threading.Thread(target=self._thread_main, name="rlhf-tui-run", daemon=True)
        self._thread.start()
        return self._thread

    def _thread_main(self) -> None:
        try:
            self.run()
        finally:
            release_mlx_streams()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.status in ("created", "running", "paused") and (self._thread is None or self._thread.is_alive())

    def pause(self) -> None:
        if self.status == "running":
            self._unpaused.clear()

    def resume(self) -> None:
        self._unpaused.set()

    def cancel(self) -> None:
        self._cancel.set()
        self._unpaused.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def paused(self) -> bool:
        return not self._unpaused.is_set()

    def weights_snapshot(self) -> dict[str, mx.array]:
        """A copy of the current trainable weights, taken between steps."""
        with self._weights_lock:
            params = dict(tree_flatten(self.config_model().trainable_parameters()))
            copied = {k: mx.array(v) for k, v in params.items()}
            mx.eval(copied)
            return copied

    def config_model(self) -> Any:
        if self.ctx is None:
            raise RuntimeError("the run has not loaded its model yet")
        return self.ctx.model

    # -------------------------------------------------------------- engine-thread helpers

    def _emit(self, event: ev.Event) -> None:
        if self.directory is not None and self._is_main and not isinstance(event, ev.StepMetrics | ev.EvalMetrics):
            try:
                if isinstance(event, ev.Sample):
                    self.directory.append_sample(dataclasses.asdict(event))
                elif not isinstance(event, ev.PhaseChanged) or event.done in (0, event.total):
                    self.directory.append_event(event.to_dict())
            except RunDirError:
                pass  # a full disk must not stop events reaching the console
        with self._lock:
            subs = list(self._subscribers)
        for fn in subs:
            try:
                fn(event)
            except Exception:  # a broken subscriber must not kill training
                traceback.print_exc()

    def _check(self) -> None:
        """Block while paused; raise Cancelled when cancelled. Called between and inside steps."""
        # With several ranks a cancel takes effect at the next step boundary, where the
        # ranks agree on it (_agreed_cancel); stopping one rank alone would hang the others.
        solo = self._world is None or self._world.size == 1
        if self._cancel.is_set() and solo:
            raise Cancelled()
        if not self._unpaused.is_set():
            self.status = "paused"
            self._emit(ev.RunPaused(self.step))
            while not self._unpaused.wait(0.05):
                pass
            if self._cancel.is_set() and solo:
                raise Cancelled()
            self.status = "running"
            self._emit(ev.RunResumed(self.step))

    def _agreed_cancel(self) -> None:
        """Every rank raises Cancelled when any rank was asked to cancel (one all-reduce)."""
        if self._world is not None and self._world.size > 1 and self._world.any(self._cancel.is_set()):
            raise Cancelled()

    @property
    def _is_main(self) -> bool:
        return self._world is None or self._world.is_main

    # -------------------------------------------------------------- the loop

    def run(self) -> dict[str, Any]:
        """Train in the calling thread; returns the summary. Never raises for run errors."""
        self.status = "running"
        self._started_at = time.time()
        try:
            self._run()
            self.status = "completed"
            self._finish("completed")
            self._emit(ev.RunFinished(self.summary))
        except Cancelled:
            self.status = "cancelled"
            self._save_checkpoint_safely()
            self._finish("cancelled")
            self._emit(ev.RunCancelled(self.summary))
        except BaseException as err:  # noqa: BLE001 - every failure must reach the user
            self.status = "failed"
            message = str(err) if isinstance(err, EngineError) else f"{type(err).__name__}: {err}"
            self._finish("failed", error=message)
            self._emit(ev.RunFailed(message, traceback.format_exc(), self.summary, bad_input=isinstance(err, EngineError)))
            if isinstance(err, KeyboardInterrupt | SystemExit):
                self._release_dir()
                raise
        try:
            if self._reporters is not None:
                self._reporters.close()  # the trackers flush before the run counts as over
        finally:
            self._release_dir()  # the last write is done: another process may take the directory
            if self.ctx is not None:
                from engine.compile import release_compiled

                for module in {id(m): m for m in (self.ctx.trainable, self.ctx.model)}.values():
                    release_compiled(module)  # the compile cache must not keep the model alive
        return self.summary

    _dir_lock: DirLock | None = None

    def _lock_dir(self, directory: RunDirectory) -> None:
        """Rank 0 (or a lone process) becomes the directory's one writer, or raises RunDirError."""
        self._dir_lock = DirLock(directory.path, "resume" if self._resume_dir else "run").acquire()
        if self._dir_lock.note:
            self._dir_notes.append(self._dir_lock.note)

    def _release_dir(self) -> None:
        if self._dir_lock is not None:
            self._dir_lock.release()

    _reporters: Any = None

    def _start_reporters(self) -> None:
        """report.to: the trackers subscribe to this run's events (rank 0 only; engine.reporting)."""
        if not self._is_main or not self.config.report.to or self.directory is None:
            return
        from engine.reporting import start_reporters

        self._reporters = start_reporters(
            self.config.report.to,
            run_dir=self.directory.path,
            project=self.config.report.project,
            alert=lambda text: self._emit(ev.Alert(self.step, text)),
        )
        if self._reporters is not None:
            self.subscribe(self._reporters)

    def _prepare_dir(self) -> None:
        world = self._world
        error: EngineError | None = None
        directory: RunDirectory | None = None
        try:
            directory = self._claim_dir()
        except EngineError as err:
            error = err
        if self._resume_dir is None and self._out_dir is None and world is not None and world.size > 1:
            # rank 0 named (and created) the directory; the others learn its name
            path = world.broadcast_text(str(directory.path) if directory else "")
            if not self._is_main:
                directory = RunDirectory(path)
        if world is not None and world.size > 1 and world.any(error is not None):
            # every rank stops together: a rank left alone would wait in a collective for ever
            raise error or RunDirError("rank 0 could not take the run directory (its error is in rank 0's output)")
        if error is not None:
            raise error
        self.directory = directory
        if self.directory is not None and self._is_main and self._resume_dir is None:
            self.directory.write_config(to_dict(resolved(self.config)))
        for text in self._dir_notes:
            self._emit(ev.LogLine(text))

    def _claim_dir(self) -> RunDirectory | None:
        """The run directory; on rank 0 a new run refuses one that holds a run (or clears it with overwrite)."""
        if self._resume_dir is not None:
            directory = RunDirectory.at(self._resume_dir, must_exist=True)
            if self._is_main:
                self._lock_dir(directory)
                self._previous_summary = directory.read_summary()
                directory.remove_temp_files()
            return directory
        if not self._is_main:
            return RunDirectory(self._out_dir) if self._out_dir else None
        directory = RunDirectory.create(self._runs_root, self.config.name) if self._out_dir is None else RunDirectory.at(self._out_dir)
        self._lock_dir(directory)  # before looking: a run still writing here is named as such
        what = directory.run_description()
        if what is not None:
            if not self._overwrite:
                directory.refuse_if_used()
            removed = directory.clear_run()
            self._dir_notes.append(f"--overwrite: removed the earlier run in {directory.path} ({what}): {', '.join(removed)}")
        elif "status" in (directory.read_summary() or {}) and (removed := directory.clear_run()):
            self._dir_notes.append(f"removed what an earlier run that trained nothing left in {directory.path}: {', '.join(removed)}")
        return directory

    def _run(self) -> None:
        cfg = self.config
        if self._world is None:
            self._world = init_world()
        world = self._world
        if cfg.train.batch_size % world.size:
            raise ConfigError(f"train.batch_size = {cfg.train.batch_size} must be a multiple of the number of ranks ({world.size})")
        if cfg.train.memory_limit_gb > 0:
            mx.set_memory_limit(int(cfg.train.memory_limit_gb * 2**30))
        wire_model_memory()
        mx.random.seed(cfg.train.seed)
        if self._is_main and cfg.report.to:
            from engine.reporting import check_reporters

            check_reporters(cfg.report.to)  # a missing extra is a one-line error before anything loads
        self._prepare_dir()
        self._start_reporters()
        if cfg.train.grad_accumulation_steps > 1 and not algorithm_class(cfg.algorithm).supports_grad_accumulation:
            raise ConfigError(
                f"train.grad_accumulation_steps = {cfg.train.grad_accumulation_steps}: {cfg.algorithm} does not accumulate gradients yet; "
                "lower train.batch_size instead"
            )
        self._emit(ev.PhaseChanged("reading data", 0, 0))
        data = check_run_data(cfg)  # files, splits, columns and row shapes: before any model download
        self._emit(ev.PhaseChanged("loading model", 0, 0))
        policy = load_policy(cfg, progress=lambda name, done, total: self._emit(ev.PhaseChanged(name, done, total)))
        data.tokenizer = policy.tokenizer
        if world.sync_parameters(policy.model):
            self._emit(ev.LogLine("the ranks loaded different weights (the model built or downloaded separately on each machine?); every rank now starts from rank 0's"))
        ctx = TrainContext(
            cfg,
            policy,
            world,
            check=self._check,
            phase=lambda name, done, total: self._emit(ev.PhaseChanged(name, done, total)),
            log=lambda text: self._emit(ev.LogLine(text)),
            alert=lambda text: self._emit(ev.Alert(self.step, text)),
            sample=lambda **kw: self._emit(ev.Sample(step=ctx.step, **kw)),
        )
        ctx.data = data
        ctx.run_dir = self.directory.path if self.directory is not None else None
        self.ctx = ctx
        algo = algorithm_class(cfg.algorithm)(ctx)
        self.algorithm = algo
        saved = self.directory.load_run_arrays() if self._resume_dir and self.directory else {}
        if self.directory is not None and self.directory.run_arrays_damaged:
            self._emit(ev.LogLine(f"{self.directory.path / 'reference.safetensors'} does not load; computing it again"))
        algo.setup(saved)
        kind = data_kind(cfg.algorithm)
        if kind is not None and self._is_main and self._resume_dir is None:
            cut, seen = data.truncation(kind)
            if cut:
                msg = f"{cut} of the first {seen} training rows are longer than model.max_length = {cfg.model.max_length} tokens and get truncated (see them with: rlhf-tui data {cfg.name})"
                self._emit(ev.Alert(0, msg) if cut * 10 >= seen else ev.LogLine(msg))
        if cfg.train.grad_checkpoint and not enable_grad_checkpoint(policy.model):
            raise ConfigError(f"train.grad_checkpoint = true, but {policy.path.name} has no transformer layers to checkpoint; set it to false")
        if cfg.train.epochs > 0:
            n = algo.train_size()  # what one pass of the data order covers (KTO: each unpaired answer)
            cfg.train.max_steps = max(1, math.ceil(cfg.train.epochs * n / cfg.train.batch_size))
            self._emit(ev.LogLine(f"train.epochs = {cfg.train.epochs:g} over {n:,} examples at batch size {cfg.train.batch_size}: {cfg.train.max_steps:,} steps"))
        if self.directory is not None and self._is_main and not saved:
            self.directory.save_run_arrays(algo.run_arrays())
        ctx.trainable = algo.trainable_module()
        ctx.build_optimizer()
        start_step = self._restore() if self._resume_dir else 0
        self.step = start_step
        ctx.step = start_step
        self._emit(
            ev.RunStarted(
                run_id=self.directory.id if self.directory else "",
                run_dir=str(self.directory.path) if self.directory else "",
                algorithm=cfg.algorithm,
                total_steps=cfg.train.max_steps,
                start_step=start_step,
                world_size=world.size,
                config=to_dict(cfg),
            )
        )
        from engine.models import trainable_count

        self._emit(ev.LogLine(f"{cfg.algorithm} on {policy.path.name}: {trainable_count(ctx.trainable):,} trainable parameters ({cfg.model.adapter}), world size {world.size}"))
        t = cfg.train
        elapsed_before = float(self._resumed_state.get("elapsed_s", 0.0)) if self._resume_dir else 0.0
        run_t0 = time.time() - elapsed_before
        if start_step == 0 and t.eval_on_start:
            self._check()
            self._evaluate(0, run_t0)  # the starting model: every eval series begins at step 0
        for step in range(start_step + 1, t.max_steps + 1):
            self._check()
            self._agreed_cancel()
            self._trim_to_checkpoint()
            ctx.step = step
            # sampling and dropout draw from a key fixed by (seed, step): a resumed run
            # draws exactly what an uninterrupted one would have; each rank its own stream
            # (rank 0's is a lone process's), so ranks do not sample the same noise
            mx.random.seed(cfg.train.seed * 1_000_003 + step + 7_919_111 * world.rank)
            ctx.apply_schedule(step)
            t0 = time.perf_counter()
            with self._weights_lock:
                result = algo.train_step(step)
            dt = time.perf_counter() - t0
            self.step = step
            metrics = result.metrics()
            num_tokens = float(result.num_tokens) * world.size
            metrics["tokens_per_sec"] = num_tokens / dt if dt > 0 else 0.0
            metrics = {k: v for k, v in world.mean({k: v for k, v in metrics.items() if v is not None}).items()} | {
                k: None for k, v in metrics.items() if v is None
            }
            row: dict[str, Any] = {
                "step": step,
                "elapsed_s": round(time.time() - run_t0, 4),
                "learning_rate": ctx.learning_rate,
                **{k: metrics.get(k) for k in PANEL_KEYS},
                **metrics,
                "step_time_s": dt,
                "memory_active_gb": mx.get_active_memory() / 2**30,
                "memory_peak_gb": mx.get_peak_memory() / 2**30,
            }
            self.last_metrics = row
            if step % t.log_every == 0 or step == t.max_steps:
                self._write_metrics(row)
                self._emit(ev.StepMetrics(step, row))
            if (t.eval_every and step % t.eval_every == 0) or step == t.max_steps:
                self._evaluate(step, run_t0)
            if (t.save_every and step % t.save_every == 0) or step == t.max_steps:
                self._save_checkpoint(step, run_t0)
        self._trim_to_checkpoint()  # (a resume with no step left to train)
        self._elapsed = time.time() - run_t0

    def _evaluate(self, step: int, run_t0: float) -> None:
        assert self.algorithm is not None and self._world is not None
        self._emit(ev.PhaseChanged("evaluating", 0, 0))
        raw = self.algorithm.evaluate()
        if not raw:
            return
        raw = self._world.mean(raw)
        row = {"step": step, "elapsed_s": round(time.time() - run_t0, 4), **{f"eval/{k}": v for k, v in raw.items()}}
        self.last_eval = row
        self._write_metrics(row)
        self._emit(ev.EvalMetrics(step, row))

    # -------------------------------------------------------------- checkpoints

    def _trainer_state(self, step: int) -> dict[str, Any]:
        assert self.algorithm is not None
        return {
            "step": step,
            "algorithm": self.algorithm.state_dict(),
            "elapsed_s": time.time() - self._started_at + float(getattr(self, "_resumed_state", {}).get("elapsed_s", 0.0)),
            "rng": "mx.random.seed(train.seed * 1000003 + step) before every step",
            "world_size": self._world.size if self._world else 1,
            "time": time.time(),
        }

    def _save_checkpoint(self, step: int, run_t0: float | None = None) -> None:
        if self.directory is None or not self._is_main or self.ctx is None or self.algorithm is None:
            return
        ctx = self.ctx
        adapters = dict(tree_flatten(ctx.model.trainable_parameters()))
        opt_state = dict(tree_flatten(ctx.optimizer.state)) if ctx.optimizer is not None else {}
        acfg = dict(ctx.policy.adapter_config)
        from engine.config import resolve_path
        from engine.fuse import base_model_id

        acfg["model"] = base_model_id(resolve_path(self.config, self.config.model.path), ctx.policy.path)  # a Hub id stays a Hub id
        path = self.directory.save_checkpoint(
            step,
            adapters=adapters,
            adapter_config=acfg,
            optimizer=opt_state,
            extra=self.algorithm.extra_arrays(),
            trainer_state=self._trainer_state(step),
            keep=3,
        )
        self._last_checkpoint = step
        self._emit(ev.CheckpointSaved(step, str(path)))

    def _save_checkpoint_safely(self) -> None:
        """On cancel: checkpoint the last completed step unless it already is one."""
        if self.step <= 0 or getattr(self, "_last_checkpoint", -1) == self.step:
            return
        try:
            self._save_checkpoint(self.step)
        except Exception as err:  # noqa: BLE001
            self._emit(ev.Alert(self.step, f"could not write the cancel checkpoint: {err}"))

    _resumed_state: dict[str, Any] = {}

    def _restore(self) -> int:
        """Load the newest checkpoint that proves it is whole; return its step."""
        assert self.directory is not None and self.ctx is not None and self.algorithm is not None
        step, path = self._choose_checkpoint()
        ctx = self.ctx
        try:
            self._check_same_adapters(path)
            weights = mx.load(str(path / "adapters.safetensors"))
            ctx.model.load_weights(list(weights.items()), strict=False)
            opt_file = path / "optimizer.safetensors"
            if opt_file.exists() and ctx.optimizer is not None:
                ctx.optimizer.init(ctx.trainable.trainable_parameters())
                ctx.optimizer.state = tree_unflatten(list(mx.load(str(opt_file)).items()))
            extra_file = path / "extra.safetensors"
            if extra_file.exists():
                self.algorithm.load_extra_arrays(dict(mx.load(str(extra_file))))
            state = json.loads((path / "trainer_state.json").read_text())
            self.algorithm.load_state_dict(state.get("algorithm", {}))
            mx.eval(ctx.model.parameters(), ctx.optimizer.state if ctx.optimizer else [])
        except (RuntimeError, ValueError, KeyError, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise RunDirError(f"{path}: cannot load this checkpoint ({first})") from None
        self._resumed_state = state
        self._last_checkpoint = step
        self._resumed_from = step
        self._resumed_path = path
        self._trim_at = step  # rows after the checkpoint go once this run writes its first row
        self._emit(ev.LogLine(f"resumed from {path} (step {step})"))
        return step

    _resumed_from: int | None = None
    _resumed_path: Path | None = None
    _trim_at: int | None = None

    def _choose_checkpoint(self) -> tuple[int, Path]:
        """Rank 0 takes the newest checkpoint whose manifest checks out, saying which it skipped
        and why; the other ranks load the one rank 0 chose."""
        assert self.directory is not None
        chosen: tuple[int, Path] | None = None
        skipped: list[str] = []
        if self._is_main:
            for step, path, verdict, detail in self.directory.intact_checkpoints():
                if verdict == "bad":
                    skipped.append(f"{path.name}: {detail}")
                    self._emit(ev.LogLine(f"skipped checkpoint {path.name}: {detail}"))
                    continue
                if verdict == "legacy":
                    self._emit(ev.LogLine(f"checkpoint {path.name}: {detail}; resuming from it"))
                chosen = (step, path)
                break
        if skipped:
            problem = f"{self.directory.path}: no intact checkpoint to resume from ({'; '.join(skipped)})"
        else:
            problem = f"{self.directory.path}: no checkpoint to resume from (the run stopped before writing its first one)"
        if self._world is not None and self._world.size > 1:
            step = self._world.broadcast_int(chosen[0] if chosen else -1)
            if step < 0:
                raise RunDirError(problem if self._is_main else "rank 0 found no intact checkpoint to resume from")
            chosen = (step, self.directory.checkpoints / f"step-{step:06d}")
        if chosen is None:
            raise RunDirError(problem)
        return chosen

    def _check_same_adapters(self, path: Path) -> None:
        """A checkpoint whose adapters have another shape than this config's is not this run's."""
        assert self.ctx is not None
        try:
            saved = json.loads((path / "adapter_config.json").read_text())
        except (OSError, ValueError):
            return  # the manifest vouched for the folder; the weights load decides
        mine = self.ctx.policy.adapter_config
        diffs = [
            f"{label}: {old} -> {new}"
            for label, old, new in (
                ("model.adapter", saved.get("fine_tune_type"), mine.get("fine_tune_type")),
                ("adapter layers", saved.get("num_layers"), mine.get("num_layers")),
                ("model.lora_rank", (saved.get("lora_parameters") or {}).get("rank"), (mine.get("lora_parameters") or {}).get("rank")),
            )
            if old is not None and old != new and not (label == "model.lora_rank" and mine.get("fine_tune_type") == "full")
        ]
        if diffs:
            raise RunDirError(f"{path}: this checkpoint was trained with other adapters than the config asks for ({'; '.join(diffs)})")

    def _trim_to_checkpoint(self) -> None:
        """Before a resumed run's first step: drop metrics and samples rows logged after its
        checkpoint (and a torn last line), so they read as one uninterrupted run."""
        if self._trim_at is not None and self.directory is not None and self._is_main:
            # only now, at its first step: a resume that fails before leaves the record as it was
            self.directory.trim_metrics_after(self._trim_at)
            self.directory.trim_samples_after(self._trim_at)
            if self._resumed_path is not None:  # (the root may hold a newer, damaged checkpoint's weights)
                try:
                    self.directory.mirror_checkpoint(self._resumed_path)
                except OSError as err:
                    raise RunDirError(f"{self.directory.path}: cannot write adapters.safetensors ({err.strerror or err})") from None
            self.directory.write_config(to_dict(resolved(self.config)))
        self._trim_at = None

    def _write_metrics(self, row: dict[str, Any]) -> None:
        if self.directory is not None and self._is_main:
            self._trim_to_checkpoint()
            self.directory.append_metrics(row)

    # -------------------------------------------------------------- summary

    def _finish(self, status: str, error: str | None = None) -> None:
        final = {k: v for k, v in self.last_metrics.items() if k != "step"}
        self.summary = {
            "status": status,
            "steps": self.step,
            "max_steps": self.config.train.max_steps,
            "world_size": self._world.size if self._world else 1,
            "algorithm": self.config.algorithm,
            "preset": self.config.name,
            "run_dir": str(self.directory.path) if self.directory else "",
            "elapsed_s": round(time.time() - self._started_at, 3),
            "final_metrics": final,
            "final_eval": {k: v for k, v in self.last_eval.items() if k.startswith("eval/")},
            "last_checkpoint": getattr(self, "_last_checkpoint", None),
            "skipped_steps": self.ctx.skipped_steps if self.ctx else 0,
        }
        if error is not None:
            self.summary["error"] = error
        record = self.summary
        if self._resume_dir is not None:
            record = self._resume_record(status, error)
        if self.directory is not None and self._is_main:
            try:
                self.directory.write_summary(record)
            except RunDirError as err:
                self.summary.setdefault("error", str(err))
            if status != "failed" and self.summary.get("last_checkpoint") is not None:
                self._write_model_card()

    def _write_model_card(self) -> None:
        """RUN_DIR/README.md, a Hugging Face model card (engine.model_card); never fails the run."""
        from engine.model_card import write_model_card

        try:
            write_model_card(self)
        except Exception as err:  # noqa: BLE001
            self._emit(ev.Alert(self.step, f"could not write the model card README.md: {err}"))

    _previous_summary: dict[str, Any] | None = None

    def _resume_record(self, status: str, error: str | None) -> dict[str, Any]:
        """What summary.json says after a resume: every attempt is listed under ``attempts``;
        an attempt that trained no step leaves the rest of the record (the last good state) as it was."""
        attempt: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "status": status,
            "resumed_from": self._resumed_from,
            "steps": self.step,
        }
        if error is not None:
            attempt["error"] = error
        previous = self._previous_summary or {}
        attempts = [*(previous.get("attempts") or []), attempt]
        self.summary["attempts"] = attempts
        progressed = self._resumed_from is not None and self.step > self._resumed_from
        if previous and not progressed and status != "completed":
            return {**previous, "attempts": attempts}
        if previous and not progressed:  # completed without a step: keep the final metrics it had
            for key in ("final_metrics", "final_eval"):
                self.summary[key] = self.summary.get(key) or previous.get(key) or {}
        return self.summary


def resume_run(run_dir: str | Path, overrides: list[str] | None = None) -> Run:
    """A Run that continues ``run_dir`` from its last checkpoint (config from its config.toml)."""
    from engine.config import apply_overrides

    directory = RunDirectory.at(run_dir, must_exist=True)
    if not directory.config_path.exists():
        raise RunDirError(f"{directory.path}: not a run directory (no config.toml)")
    saved = config_from_dict(load_toml(directory.config_path), source=str(directory.config_path))
    cfg = apply_overrides(resolved(saved), overrides or [])  # (a copy: apply_overrides works in place)
    changed = config_diff(resolved(cfg), resolved(saved))
    differences = [f"{key}: {changed[key][0]} -> {changed[key][1]}" for key in SAME_RUN_KEYS if key in changed]
    if differences:
        raise RunDirError(
            f"{directory.path}: these overrides change what its checkpoints mean ({'; '.join(differences)}); "
            "resume without them, or start a new run (rlhf-tui run PRESET --out NEW_DIR)"
        )
    return Run(cfg, resume_dir=directory.path)


# what a checkpoint means: a resume may change anything else (max_steps, learning rate, ...)
# (the weights' dtype and the optimizer state's layout: a checkpoint's state is restored as saved)
SAME_RUN_KEYS = ("algorithm", "model.path", "model.adapter", "model.lora_rank", "model.lora_layers", "model.quantize", "model.dtype", "train.optimizer_state")
