"""Labelling without a screen: the completion queue, a cached view of the label file, and
preparing a training round on the labels.

``CompletionQueue`` keeps ``ahead`` prompts' completions sampled before the person needs them.
It owns its generator thread and every piece of state that thread touches (pending prompts,
ready items, the item shown, the resolved model) behind one lock. Each ``start`` (new model,
sampling or labeller) begins a new *generation* of the queue: whatever an older generation's
thread produces afterwards is dropped. A UI learns what happened through three callbacks,
called from the generator thread with the generation they belong to: ``on_ready(generation)``
(items were queued), ``on_loaded(description, generation)`` (the model is loaded) and
``on_failed(error, generation)`` (one line; the queue stops). A UI that handles them later,
on its own thread, drops those whose generation is no longer ``queue.generation``.

``LabelStats`` answers "what is in the label file" for a status line polled every second; it
parses the file again only when the file (or its sidecar) changed on disk.

``round_config`` / ``prepare_round`` turn the label file and the current model into the
``RunConfig`` of a training round and its run directory (a copy of the pairs plus
``data_provenance.json``).
"""

from __future__ import annotations

import atexit
import copy
import json
import math
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import Cancelled, EngineError
from engine.labels import Agreement, LabelFile, agreements, items_to_relabel, prompt_key, utc_now

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.run import Run
    from engine.sampling import ModelChoice, Sampling

AHEAD = 6  # prompts kept generated ahead of the person
BATCH = 4  # prompts sampled together


@dataclass(frozen=True)
class Item:
    """A prompt and the completions shown for it."""

    prompt: Any
    completions: tuple[str, ...]  # two to four, shown in panes A..D
    model: ModelChoice


@dataclass(frozen=True)
class QueueCounts:
    ready: int  # items sampled and waiting
    pending: int  # prompts not sampled yet
    busy: int  # prompts being sampled now
    current: bool  # an item is being shown

    @property
    def left(self) -> int:
        """Prompts of this generation not labelled yet (shown, waiting, or to come)."""
        return self.ready + self.pending + self.busy + int(self.current)

    @property
    def finished(self) -> bool:
        """Nothing waiting, nothing to sample, nothing being sampled."""
        return not (self.ready or self.pending or self.busy)


def _no_event(*_: Any) -> None:
    return None


class CompletionQueue:
    """Sampled completions ready ahead of the labeller (see the module doc)."""

    def __init__(
        self,
        *,
        on_ready: Callable[[int], None] = _no_event,
        on_loaded: Callable[[str, int], None] = _no_event,
        on_failed: Callable[[str, int], None] = _no_event,
        ahead: int = AHEAD,
        batch: int = BATCH,
        seed: int = 0,
        max_length: int = 512,
    ) -> None:
        self.on_ready, self.on_loaded, self.on_failed = on_ready, on_loaded, on_failed
        self.ahead, self.batch, self.seed, self.max_length = ahead, batch, seed, max_length
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready: deque[Item] = deque()
        self._pending: deque[Any] = deque()
        self._generation = 0
        self._busy = 0
        self._current: Item | None = None
        self._choice: ModelChoice | None = None

    # -------------------------------------------------------------- state (any thread)

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    @property
    def current(self) -> Item | None:
        with self._lock:
            return self._current

    @property
    def choice(self) -> ModelChoice | None:
        """The model that writes the completions, once known (resolved by the generator)."""
        with self._lock:
            return self._choice

    @choice.setter
    def choice(self, value: ModelChoice | None) -> None:
        with self._lock:
            self._choice = value

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def counts(self) -> QueueCounts:
        with self._lock:
            return QueueCounts(len(self._ready), len(self._pending), self._busy, self._current is not None)

    def ready_items(self) -> list[Item]:
        with self._lock:
            return list(self._ready)

    def pending_prompts(self) -> list[Any]:
        """Prompts not sampled yet, in the order they will be."""
        with self._lock:
            return list(self._pending)

    # -------------------------------------------------------------- filling

    def clear(self) -> int:
        """Stop the generator and empty the queue (a new, empty generation); returns it."""
        self.cancel()
        with self._lock:
            self._generation += 1
            self._ready.clear()
            self._pending.clear()
            self._busy = 0
            self._current = None
            return self._generation

    def start(self, prompts: Iterable[Any], model: ModelChoice | str, sampling: Sampling, *, resolve: Callable[[str], ModelChoice] | None = None) -> int:
        """Refill: sample ``sampling.n`` completions for each of ``prompts`` with ``model`` (a
        choice, or a spec that ``resolve`` — default ``resolve_model_choice`` — turns into one
        in the generator thread). Returns the new generation."""
        from engine.sampling import ModelChoice

        generation = self.clear()
        with self._lock:
            self._pending.extend(prompts)
            self._choice = model if isinstance(model, ModelChoice) else None  # a spec: known once resolved
        cancel = self._cancel = threading.Event()
        thread = threading.Thread(
            target=self._main, args=(generation, cancel, model, sampling, resolve), name="rlhf-tui-labelling", daemon=True
        )
        self._thread = thread
        track_generator(thread)
        thread.start()
        return generation

    def start_relabel(self, rows: Sequence[dict[str, Any]], labeller: str, *, seed: int | None = None) -> int:
        """Refill with the items other labellers judged that ``labeller`` has not (no sampling):
        each shown with its completions in a shuffled order, under the model that wrote them."""
        from engine.sampling import ModelChoice

        generation = self.clear()
        rng = random.Random(self.seed if seed is None else seed)
        placeholder = ModelChoice("relabel", "", None)
        items = []
        for prompt, shown in items_to_relabel(rows, labeller):
            order = list(shown)
            rng.shuffle(order)
            items.append(Item(prompt, tuple(order), _model_of(rows, prompt, shown) or placeholder))
        with self._lock:
            if generation == self._generation:
                self._ready.extend(items)
        return generation

    # -------------------------------------------------------------- the labeller's side

    def advance(self) -> Item | None:
        """Show the next ready item (None when none is ready); wakes the generator to refill."""
        with self._lock:
            self._current = self._ready.popleft() if self._ready else None
            item = self._current
        self._wake.set()
        return item

    def put_back(self, item: Item) -> None:
        """Show ``item`` again now (an undone label); the item shown so far comes next."""
        with self._lock:
            if self._current is not None:
                self._ready.appendleft(self._current)
            self._current = item

    # -------------------------------------------------------------- stopping

    def cancel(self) -> None:
        """Stop the generator thread (it ends at its next check, mid-sample included)."""
        self._cancel.set()
        self._wake.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the generator thread to end; True when it has."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # -------------------------------------------------------------- the generator thread

    def _is_current(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation

    def _main(self, generation: int, cancel: threading.Event, model: ModelChoice | str, sampling: Sampling, resolve: Callable[[str], ModelChoice] | None) -> None:
        """A thread of its own rather than a pool worker: MLX's per-thread streams must be
        released by the thread that made them when it ends (as ``engine.run.Run`` does)."""
        import mlx.core as mx

        from engine.sampling import CompletionWriter, ModelChoice, resolve_model_choice
        from engine.threads import release_mlx_streams

        def check() -> None:
            if cancel.is_set():
                raise Cancelled()

        batch: list[Any] = []
        try:
            if isinstance(model, ModelChoice):
                choice = model
            else:
                choice = (resolve or resolve_model_choice)(model)
                with self._lock:
                    if generation != self._generation:
                        return
                    self._choice = choice
            check()
            mx.random.seed(self.seed)
            writer = CompletionWriter(choice, self.max_length)
            check()
            if self._is_current(generation):
                self.on_loaded(choice.describe(), generation)
            while not cancel.is_set():
                with self._lock:
                    if generation != self._generation:
                        return
                    room = self.ahead - len(self._ready)
                    batch = [self._pending.popleft() for _ in range(min(max(room, 0), self.batch, len(self._pending)))]
                    self._busy = len(batch)
                if not batch:
                    self._wake.wait(0.2)
                    self._wake.clear()
                    continue
                texts = writer.complete(batch, sampling, check=check)
                with self._lock:
                    if generation != self._generation or cancel.is_set():
                        return  # refilled or cancelled meanwhile: these completions are stale
                    self._ready.extend(Item(p, tuple(t), choice) for p, t in zip(batch, texts, strict=True))
                    self._busy = 0
                    batch = []
                self.on_ready(generation)
        except Cancelled:
            return
        except Exception as err:  # noqa: BLE001 - reported to the UI; the app stays up
            if self._is_current(generation):
                self.on_failed(one_line_error(err), generation)
        finally:
            with self._lock:
                if batch and generation == self._generation:
                    self._pending.extendleft(reversed(batch))  # cancelled mid-sample: still to do
                    self._busy = 0
            release_mlx_streams()


def one_line_error(err: BaseException) -> str:
    """An engine error's own message; anything else with its type — on one line."""
    text = str(err) if isinstance(err, EngineError) else f"{type(err).__name__}: {err}"
    return " ".join(text.split())


def _model_of(rows: Sequence[dict[str, Any]], prompt: Any, completions: tuple[str, ...]) -> ModelChoice | None:
    from engine.sampling import ModelChoice

    for r in rows:
        if r.get("prompt") == prompt and tuple(r.get("completions", ())) == completions:
            return ModelChoice("relabel", str(r.get("model", "")), r.get("checkpoint"))
    return None


def unlabelled_prompts(prompts_path: str | Path, rows: Iterable[dict[str, Any]], labeller: str) -> tuple[list[Any], int]:
    """The prompts of a prompt file that ``labeller`` has not labelled yet (in file order), and
    how many prompts the file holds."""
    from engine.data import load_records

    records = load_records(str(prompts_path), "prompt")
    done = {prompt_key(r["prompt"]) for r in rows if r.get("labeller") == labeller}
    return [r.prompt for r in records if prompt_key(r.prompt) not in done], len(records)


def resume_checkpoint(rows: Iterable[dict[str, Any]], labeller: str, model_spec: str) -> str | None:
    """Coming back: the weights ``labeller`` last labelled with (a later round's checkpoint),
    when they started from ``model_spec`` and the folder still exists; else None."""
    mine = [r for r in rows if r.get("labeller") == labeller]
    if not mine:
        return None
    last = mine[-1]
    checkpoint = last.get("checkpoint")
    if checkpoint and last.get("model") == str(model_spec) and Path(checkpoint).is_dir():
        return str(checkpoint)
    return None


def undone_item(row: dict[str, Any], model: ModelChoice) -> Item:
    """An undone label's item, to be judged again: its prompt and completions as shown, under
    the weights that wrote them (``model`` with the row's base and checkpoint)."""
    model = replace(model, base=str(row.get("model", model.base)), adapter_dir=row.get("checkpoint"))
    return Item(row["prompt"], tuple(row["completions"]), model)


def parse_sampling(text: str, base: Sampling) -> Sampling:
    """``temperature=0.8 top_p=0.95 max_tokens=32`` (any subset) over ``base``."""
    kinds = {"temperature": float, "top_p": float, "max_tokens": int, "n": int}
    values: dict[str, Any] = {}
    for part in text.replace(",", " ").split():
        key, sep, value = part.partition("=")
        if not sep or key not in kinds:
            raise ValueError(f"{part!r}: expected temperature=…, top_p=…, max_tokens=… or n=… (completions per prompt, 2-4)")
        try:
            values[key] = kinds[key](value)
        except ValueError:
            raise ValueError(f"{part!r}: {key} must be {'an integer' if kinds[key] is int else 'a number'}") from None
    return replace(base, **values)


def builtin_prompts() -> Path:
    """The built-in model's prompts (what the labelling screen offers by default)."""
    from engine.presets import builtin_dir

    return builtin_dir() / "data" / "sort_prompts.jsonl"


def default_labeller() -> str:
    """The labeller's name when none is given: the user's login name."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "labeller"


def resolve_labelling_model(spec: str, *, label_path: str | Path, live_run: Run | None = None) -> ModelChoice:
    """``resolve_model_choice(spec)``, plus ``live``: the current weights of ``live_run`` (the
    run training in the app), saved next to the label file (``live_snapshot_folder``)."""
    from engine.sampling import resolve_model_choice, snapshot_live_run

    if spec.strip().lower() != "live":
        return resolve_model_choice(spec)
    if live_run is None or live_run.ctx is None:
        raise EngineError("'live' needs a run training in this app (it has not loaded its model yet, or there is none)")
    return snapshot_live_run(live_run, live_snapshot_folder(label_path, live_run))


def live_snapshot_folder(label_path: str | Path, run: Run) -> Path:
    """Where ``live`` saves a training run's current weights: next to the label file, named by
    the run and its step, so the labels can name them."""
    path = Path(label_path)
    run_id = run.directory.id if run.directory else "run"
    return path.with_name(f"{path.stem}.models") / f"{run_id}-step-{run.step:06d}"


# ---------------------------------------------------------------- the generator threads at exit

_GENERATORS: set[threading.Thread] = set()
_REGISTERED: list[Callable[[], None]] = []
_REGISTRY_LOCK = threading.Lock()


def track_generator(thread: threading.Thread) -> None:
    """Remember a generator thread so that interpreter exit waits for it."""
    with _REGISTRY_LOCK:
        if join_generators not in _REGISTERED:
            atexit.register(join_generators)
            _REGISTERED.append(join_generators)
        _GENERATORS.difference_update([t for t in _GENERATORS if not t.is_alive()])
        _GENERATORS.add(thread)


def join_generators(timeout: float = 30.0) -> None:
    """At exit, let cancelled generator threads finish: a thread that still holds MLX
    streams when the interpreter goes down aborts the process ("terminate called ...")."""
    with _REGISTRY_LOCK:
        threads = list(_GENERATORS)
    for thread in threads:
        thread.join(timeout)


# ---------------------------------------------------------------- the label file, cached


@dataclass(frozen=True)
class LabelSummary:
    """What a status line shows about a label file."""

    rows: tuple[dict[str, Any], ...]  # every label of both files, by ``n``
    pairs: int  # rows that are training pairs
    agreements: tuple[Agreement, ...]

    @property
    def others(self) -> int:
        return len(self.rows) - self.pairs


class LabelStats:
    """The rows of a label file (and its sidecar) and their agreement, parsed again only when
    either file changes on disk (its size, mtime or inode)."""

    def __init__(self, labels: LabelFile) -> None:
        self.labels = labels
        self._key: tuple[Any, ...] | None = None
        self._summary: LabelSummary | None = None

    def _stamp(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for path in (self.labels.path, self.labels.sidecar):
            try:
                st = path.stat()
            except FileNotFoundError:
                out.append(None)
            else:
                out.append((st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(out)

    def summary(self) -> LabelSummary:
        key = self._stamp()
        if self._summary is None or key != self._key:
            rows = self.labels.rows()
            pairs = sum(1 for r in rows if "chosen" in r)
            self._summary = LabelSummary(tuple(rows), pairs, tuple(agreements(rows)))
            self._key = key
        return self._summary

    def rows(self) -> list[dict[str, Any]]:
        return list(self.summary().rows)


# ---------------------------------------------------------------- a training round on the labels


def round_config(
    labels: LabelFile,
    choice: ModelChoice | None,
    *,
    algorithm: str = "dpo",
    base_config: RunConfig | None = None,
    round_steps: int | None = None,
) -> RunConfig:
    """The config of a training round on the labelled pairs, starting from the weights that
    wrote them (``choice``): a run's own hyperparameters when the weights come from a run,
    else ``base_config`` (default: the default preset) with ``choice``'s base model. Steps:
    ``round_steps``, or about 8 epochs (10 to 200)."""
    from engine.api import run_config
    from engine.config import resolve_path
    from engine.presets import DEFAULT_PRESET, load_preset

    if choice is not None and choice.run_dir:
        cfg = run_config(choice.run_dir)  # the hyperparameters that trained these weights
    else:
        cfg = copy.deepcopy(base_config) if base_config is not None else load_preset(DEFAULT_PRESET)
        if choice is not None and choice.base and choice.base not in (cfg.model.path, resolve_path(cfg, cfg.model.path)):
            cfg.model.path = choice.base
    pairs = len(labels.pairs())
    cfg.algorithm = algorithm
    cfg.name = f"labels-{algorithm}"
    cfg.description = f"{algorithm.upper()} on {pairs} labelled pairs from {labels.path}"
    cfg.model.init_from = (choice.adapter_dir or "") if choice is not None else ""
    cfg.train.batch_size = max(1, min(cfg.train.batch_size, pairs))
    cfg.train.max_steps = round_steps or max(10, min(200, math.ceil(8 * pairs / cfg.train.batch_size)))
    cfg.train.save_every = 0
    cfg.train.eval_every = max(cfg.train.max_steps // 2, 1)
    return cfg


def prepare_round(labels: LabelFile, cfg: RunConfig, runs_root: str | Path, *, clock: Callable[[], str] = utc_now) -> Path:
    """A new run directory for ``cfg`` holding a copy of the pairs as they are now
    (``train_labels.jsonl``, which ``cfg.data.train`` then names) and ``data_provenance.json``
    (where the rows came from). Returns the directory."""
    from engine.labels import snapshot_pairs
    from engine.rundir import RunDirectory, atomic_write_text

    directory = RunDirectory.create(runs_root, cfg.name)
    record = snapshot_pairs(labels.path, directory.path / "train_labels.jsonl")
    record |= {
        "algorithm": cfg.algorithm,
        "base_model": cfg.model.path,
        "init_from": cfg.model.init_from or None,
        "skipped_file": str(labels.sidecar.resolve()),
        "started": clock(),
    }
    atomic_write_text(directory.path / "data_provenance.json", json.dumps(record, indent=2) + "\n")
    cfg.data.train = str(directory.path / "train_labels.jsonl")
    return directory.path
