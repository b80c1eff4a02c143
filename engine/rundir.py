"""The run directory: everything a run writes, written so a crash never leaves it torn.

Layout of ``runs/<id>/``::

    config.toml              fully resolved config
    metrics.jsonl            one JSON object per logged step (eval rows carry eval/ keys)
    events.log               one JSON object per event (logs, alerts, checkpoints, status)
    samples.jsonl            PPO/GRPO samples
    summary.json             status, steps, world_size, final metrics, error
    reference.safetensors    arrays fixed for the whole run (cached reference log-probs)
    adapters.safetensors     latest adapters/weights in mlx-lm's format, with
    adapter_config.json      ... so `mlx_lm.generate --adapter-path runs/<id>` works
    checkpoints/step-000050/ adapters.safetensors, adapter_config.json, optimizer.safetensors,
                             extra.safetensors, trainer_state.json

Files are replaced atomically (write a temp file, fsync, rename); a checkpoint folder is
complete once it is renamed into place. ``metrics.jsonl`` lines are appended with a
single write each, and readers skip a trailing partial line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import EngineError, RunDirError

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
# what a run writes at the top of its folder; --overwrite removes exactly these
RUN_ENTRIES = (
    "config.toml",
    "metrics.jsonl",
    "events.log",
    "samples.jsonl",
    "summary.json",
    "reference.safetensors",
    "adapters.safetensors",
    "adapter_config.json",
    "checkpoints",
    "tensorboard",
    "wandb",  # report.to = wandb (offline runs)
    "README.md",  # the model card (engine.model_card)
)
# a run that left any of these trained something (a config and a summary alone: it failed first)
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "adapters.safetensors")
SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A run-id prefix that cannot escape the runs folder."""
    cleaned = SAFE_NAME_RE.sub("-", name).strip(".-") or "run"
    return cleaned[:64]


def atomic_write_bytes(path: Path, data: bytes, *, error: type[EngineError] = RunDirError, doing: str = "cannot write") -> None:
    """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, fsync the folder.

    A failure raises ``error`` with "<path>: <doing> (<reason>)" and leaves the old file.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise error(f"{path}: {doing} ({err.strerror or err})") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def parse_jsonl_lines(lines: list[bytes]) -> list[dict[str, Any]]:
    """The JSON objects among ``lines``; undecodable or non-object lines are skipped."""
    rows = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file, skipping a torn final line and any undecodable line."""
    if not path.exists():
        return []
    with open(path, "rb") as fh:
        return parse_jsonl_lines(fh.read().split(b"\n"))


class JsonlTail:
    """Reads rows appended to a JSONL file since the last call (for following a live run)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.buffer = b""

    def read_new(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # rewritten (resume trims rows): start again
            self.offset, self.buffer = 0, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(size - self.offset)
        self.offset = size
        data = self.buffer + chunk
        lines = data.split(b"\n")
        self.buffer = lines.pop()  # incomplete tail, if any
        return parse_jsonl_lines(lines)


class RunDirectory:
    """A run's folder on disk; only rank 0 writes it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    # -------------------------------------------------------------- creation

    @classmethod
    def create(cls, root: Path | str, name: str) -> RunDirectory:
        root = Path(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = f"{safe_name(name)}-{stamp}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            for n in range(1000):
                candidate = root / (base if n == 0 else f"{base}-{n}")
                try:
                    candidate.mkdir()
                    return cls(candidate)
                except FileExistsError:
                    continue
        except OSError as err:
            raise RunDirError(f"{root}: cannot create a run directory ({err.strerror or err})") from None
        raise RunDirError(f"{root}: too many runs named {base}")

    @classmethod
    def at(cls, path: Path | str, *, must_exist: bool = False) -> RunDirectory:
        p = Path(path).expanduser()
        if must_exist and not p.is_dir():
            raise RunDirError(f"{p}: run directory not found")
        if not must_exist:
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise RunDirError(f"{p}: cannot create the output directory ({err.strerror or err})") from None
            if not os.access(p, os.W_OK):
                raise RunDirError(f"{p}: output directory is not writable")
        return cls(p)

    @property
    def id(self) -> str:
        return self.path.name

    # -------------------------------------------------------------- an earlier run here

    def holds_run(self) -> bool:
        """True when an earlier run trained here (it left metrics, checkpoints or weights)."""
        return any((self.path / name).exists() for name in RUN_MARKERS)

    def run_description(self) -> str | None:
        """What run this folder holds, e.g. ``dpo, 10/10 steps, completed``; None when it holds none."""
        if not self.holds_run():
            return None
        algorithm, max_steps = "unknown algorithm", None
        try:
            import tomllib

            cfg = tomllib.loads(self.config_path.read_text())
            algorithm = str(cfg.get("algorithm", algorithm))
            max_steps = (cfg.get("train") or {}).get("max_steps")
        except (OSError, ValueError):
            pass
        summary = self.read_summary()
        if summary is not None:
            steps, status = summary.get("steps"), str(summary.get("status", "unknown status"))
        else:
            logged = [int(r["step"]) for r in self.read_metrics() if isinstance(r.get("step"), int)]
            latest = self.latest_checkpoint()
            steps = max(logged + ([latest[0]] if latest else []), default=0)
            status = "stopped without a summary"
        of = f"/{max_steps}" if max_steps is not None else ""
        return f"{algorithm}, {steps}{of} steps, {status}"

    def refuse_if_used(self) -> None:
        """Raise RunDirError (one line: what is here, how to continue or replace it) if a run is here."""
        what = self.run_description()
        if what is None:
            return
        if self.latest_checkpoint() is None:
            raise RunDirError(
                f"{self.path}: already holds a run ({what}) with no checkpoint to continue from; "
                "replace it with --overwrite (overwrite=True in Python) or choose another --out"
            )
        raise RunDirError(
            f"{self.path}: already holds a run ({what}); continue it with 'rlhf-tui resume {self.path}' "
            "or replace it with --overwrite (overwrite=True in Python)"
        )

    def clear_run(self) -> list[str]:
        """Delete an earlier run's files (only those a run writes; other files stay); returns their names."""
        removed = []
        for name in RUN_ENTRIES:
            p = self.path / name
            if name == "README.md" and not _is_model_card(p):
                continue  # the user's own README stays
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
                else:
                    continue
            except OSError as err:
                raise RunDirError(f"{p}: cannot remove the earlier run's file ({err.strerror or err})") from None
            removed.append(name)
        self.remove_temp_files()
        return removed

    def remove_temp_files(self) -> None:
        """Temp files a killed writer left at the top of the folder (call only while holding the lock)."""
        leftovers = [p for name in RUN_ENTRIES for p in self.path.glob(f".{name}.tmp-*")]
        for p in [*leftovers, self.path / ".reference.tmp.safetensors"]:
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)

    # -------------------------------------------------------------- files

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def events_path(self) -> Path:
        return self.path / "events.log"

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def write_config(self, config_dict: dict[str, Any]) -> None:
        import tomli_w

        atomic_write_text(self.config_path, tomli_w.dumps(config_dict))

    def _append(self, path: Path, obj: dict[str, Any]) -> None:
        line = (json.dumps(obj, allow_nan=False, default=_jsonable) + "\n").encode("utf-8")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.fstat(fd).st_size
                try:
                    if os.write(fd, line) != len(line):  # one write per line: readers never see half a row
                        raise OSError(errno.ENOSPC, "short write")
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)  # no half row left for the next line to glue onto
                    raise
            finally:
                os.close(fd)
        except OSError as err:
            raise RunDirError(f"{path}: cannot append ({err.strerror or err})") from None

    def append_metrics(self, row: dict[str, Any]) -> None:
        self._append(self.metrics_path, _finite(row))

    def append_event(self, event: dict[str, Any]) -> None:
        self._append(self.events_path, _finite(event))

    def append_sample(self, sample: dict[str, Any]) -> None:
        self._append(self.samples_path, _finite(sample))

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def read_events(self) -> list[dict[str, Any]]:
        return read_jsonl(self.events_path)

    def trim_metrics_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run logs them again) and any torn line."""
        _trim_after(self.metrics_path, step)

    def trim_samples_after(self, step: int) -> None:
        if self.samples_path.exists():
            _trim_after(self.samples_path, step)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(_finite(summary), indent=2, default=_jsonable) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.summary_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    # -------------------------------------------------------------- checkpoints

    def checkpoint_dirs(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for child in self.checkpoints.iterdir():
            m = CHECKPOINT_RE.match(child.name)
            if m and (child / "trainer_state.json").exists():
                found.append((int(m.group(1)), child))
        return sorted(found)

    def intact_checkpoints(self) -> Iterator[tuple[int, Path, str, str]]:
        """Checkpoints newest first with their check: ``(step, path, verdict, detail)``.

        ``verdict`` is ``"ok"`` (the manifest checks out), ``"legacy"`` (no manifest, written
        before manifests existed, but its files load) or ``"bad"`` (``detail`` says why).
        Lazy: a caller that takes the first good one hashes no older checkpoint.
        """
        for step, path in reversed(self.checkpoint_dirs()):
            verdict, detail = check_checkpoint(path)
            yield step, path, verdict, detail

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        dirs = self.checkpoint_dirs()
        return dirs[-1] if dirs else None

    def save_checkpoint(
        self,
        step: int,
        *,
        adapters: dict[str, Any],
        adapter_config: dict[str, Any],
        optimizer: dict[str, Any],
        extra: dict[str, Any],
        trainer_state: dict[str, Any],
        keep: int = 0,
    ) -> Path:
        """Write checkpoint ``step`` atomically and copy its adapters to the run root."""
        import mlx.core as mx

        self.checkpoints.mkdir(parents=True, exist_ok=True)
        final = self.checkpoints / f"step-{step:06d}"
        tmp = self.checkpoints / f".tmp-step-{step:06d}-{os.getpid()}"
        replaced = self.checkpoints / f".replaced-step-{step:06d}-{os.getpid()}"
        try:
            for stale in [*self.checkpoints.glob(".tmp-step-*"), *self.checkpoints.glob(".replaced-step-*")]:
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed writer (this one holds the lock)
            tmp.mkdir()
            mx.save_safetensors(str(tmp / "adapters.safetensors"), adapters)
            (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
            if optimizer:
                mx.save_safetensors(str(tmp / "optimizer.safetensors"), optimizer)
            if extra:
                mx.save_safetensors(str(tmp / "extra.safetensors"), extra)
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, default=_jsonable))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            # the manifest last (sizes and hashes of what is on disk now): resume trusts only
            # a checkpoint whose files still match it
            manifest = {"format": 1, "step": step, "files": {f.name: file_entry(f) for f in sorted(tmp.iterdir())}}
            part = tmp / f".{MANIFEST_NAME}.part"
            with open(part, "wb") as fh:
                fh.write((json.dumps(manifest, indent=2) + "\n").encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(part, tmp / MANIFEST_NAME)
            _fsync_dir(tmp)
            if final.exists():
                os.replace(final, replaced)
            os.replace(tmp, final)
            _fsync_dir(self.checkpoints)
            shutil.rmtree(replaced, ignore_errors=True)
            self.mirror_checkpoint(final)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunDirError(f"{final}: cannot write checkpoint ({err.strerror or err}); earlier checkpoints are intact") from None
        if keep > 0:
            for _, old in self.checkpoint_dirs()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def mirror_checkpoint(self, checkpoint: Path) -> None:
        """Make the run root's adapters (what ``mlx_lm --adapter-path RUN_DIR`` loads) those of ``checkpoint``."""
        for name in ("adapters.safetensors", "adapter_config.json"):
            data = (checkpoint / name).read_bytes()
            root = self.path / name
            try:
                if root.stat().st_size == len(data) and root.read_bytes() == data:
                    continue
            except OSError:
                pass
            atomic_write_bytes(root, data)

    def save_run_arrays(self, arrays: dict[str, Any]) -> None:
        import mlx.core as mx

        if not arrays:
            return
        tmp = self.path / ".reference.tmp.safetensors"
        try:
            mx.save_safetensors(str(tmp), arrays)
            os.replace(tmp, self.path / "reference.safetensors")
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise RunDirError(f"{self.path / 'reference.safetensors'}: cannot write ({err.strerror or err})") from None

    def load_run_arrays(self) -> dict[str, Any]:
        import mlx.core as mx

        p = self.path / "reference.safetensors"
        if not p.exists():
            return {}
        try:
            arrays = dict(mx.load(str(p)))
            mx.eval(list(arrays.values()))
        except Exception:  # noqa: BLE001 - torn or damaged: it is a cache, the run computes it again
            self.run_arrays_damaged = True
            return {}
        return arrays

    run_arrays_damaged = False


def _is_model_card(path: Path) -> bool:
    """True for a README.md that engine.model_card wrote (front matter tagged rlhf-tui)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    front = head.split("\n---", 1)[0]
    return head.startswith("---") and "library_name: mlx" in front and "rlhf-tui" in front


def _trim_after(path: Path, step: int) -> None:
    def keep(row: dict[str, Any]) -> bool:
        try:
            return int(row.get("step", 0)) <= step
        except (TypeError, ValueError):
            return False

    rows = [r for r in read_jsonl(path) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


MANIFEST_NAME = "manifest.json"


def file_entry(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of one file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


def check_checkpoint(path: Path) -> tuple[str, str]:
    """``("ok", "")``, ``("legacy", why)`` or ``("bad", why)`` for one checkpoint folder."""
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.exists():
        problem = _loads_whole(path)
        if problem:
            return "bad", f"no manifest, and {problem}"
        return "legacy", "no manifest (written before checkpoints had one); its files load"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        assert isinstance(files, dict) and files
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return "bad", f"{MANIFEST_NAME} is unreadable"
    for name, want in sorted(files.items()):
        f = path / name
        if not f.is_file():
            return "bad", f"{name} is missing"
        size = f.stat().st_size
        if size != want.get("size"):
            return "bad", f"{name} is {size} bytes, the manifest says {want.get('size')}"
        if file_entry(f)["sha256"] != want.get("sha256"):
            return "bad", f"{name} does not match its sha256 in the manifest"
    return "ok", ""


def _loads_whole(path: Path) -> str:
    """Why the files of a manifest-less checkpoint do not load ("" when they do)."""
    import mlx.core as mx

    if not (path / "adapters.safetensors").is_file():
        return "adapters.safetensors is missing"
    for f in sorted(path.glob("*.safetensors")):
        try:
            mx.eval(list(mx.load(str(f)).values()))
        except Exception as err:  # noqa: BLE001 - MLX raises RuntimeError/ValueError for torn files
            return f"{f.name} does not load ({str(err).splitlines()[0][:120] if str(err) else type(err).__name__})"
    for f in sorted(path.glob("*.json")):
        try:
            json.loads(f.read_text())
        except (OSError, ValueError):
            return f"{f.name} is not valid JSON"
    return ""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # (Windows cannot open a folder; renames are durable there anyway)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _finite(obj: Any) -> Any:
    """NaN/inf become null so every line is strict JSON."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
