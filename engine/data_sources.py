"""Where rows come from: local files, Hugging Face dataset folders and Hub dataset ids.

``read_split(spec, split)`` returns the rows of one split as ``(where, object)`` pairs,
``where`` naming the file and line (or the dataset and row) for error messages:

* a ``.jsonl`` / ``.json`` file is read here, line by line (errors name the line);
* a ``.parquet`` / ``.arrow`` file, a folder in the Hugging Face layout
  (``data/train-*.parquet``, JSON shards, ``save_to_disk`` output) and a Hub dataset id
  (``trl-lib/ultrafeedback_binarized``) go through the ``datasets`` library, imported only
  then; a folder in mlx-lm's layout (``train.jsonl`` / ``valid.jsonl``) is read here;
* ``split`` is a split name with ``datasets``' slice syntax (``train``, ``train[:2000]``,
  ``test[10%:20%]``). A single file has no split names: only its slice is used.

Offline (no network, or ``HF_HUB_OFFLINE=1``) a Hub id is read from the local cache; what
is missing is said in one line. Every failure is a :class:`DataError`.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import DataError

Row = tuple[str, dict[str, Any]]  # (where, object)
LOCAL_SUFFIXES = (".jsonl", ".json")
TABLE_SUFFIXES = (".parquet", ".arrow")
EVAL_SPLIT_ALIASES = ("test", "validation", "valid", "eval", "dev")
_SPLIT_RE = re.compile(r"^\s*([\w.-]+)\s*(\[[^\]]*\])?\s*$")


@dataclass(frozen=True)
class SplitSpec:
    """A split name and an optional ``datasets`` slice: ``train[:2000]`` -> ("train", "[:2000]")."""

    name: str
    slice: str = ""

    @classmethod
    def parse(cls, text: str, key: str) -> SplitSpec:
        m = _SPLIT_RE.match(text or "")
        if not m:
            raise DataError(f"{key} = {text!r} is not a split: expected a name with an optional slice, like 'train' or 'train[:2000]'")
        return cls(m.group(1), m.group(2) or "")

    def __str__(self) -> str:
        return self.name + self.slice


def is_hub_id(spec: str) -> bool:
    """``owner/name`` that is not a local path."""
    if not spec or Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")):
        return False
    parts = spec.split("/")
    return len(parts) == 2 and all(re.fullmatch(r"[A-Za-z0-9][\w.-]*", p) for p in parts)


def describe_source(spec: str) -> str:
    if is_hub_id(spec):
        return "Hub dataset"
    p = Path(spec).expanduser()
    if p.is_dir():
        return "dataset folder"
    return f"{p.suffix.lstrip('.') or 'data'} file"


# ---------------------------------------------------------------- entry point


def read_split(spec: str, split: str, *, key: str = "data.train", split_key: str = "data.train_split", cache: Loaded | None = None) -> list[Row]:
    """Rows of ``split`` of the data that ``spec`` names (a file, folder or Hub id). ``cache``
    keeps what ``datasets`` loaded per spec, so a run reading train, eval and the split names
    of one dataset loads it once."""
    if not spec:
        raise DataError(f"{key} is empty: name a JSONL/JSON/parquet file, a dataset folder or a Hub dataset id")
    want = SplitSpec.parse(split, split_key)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix in TABLE_SUFFIXES:
            return _from_datasets(_load_table_file(path), str(path), want, whole_file=True, cache=cache)
        rows = read_json_rows(path)
        return _slice_rows(rows, want, str(path))
    if path.is_dir():
        local = _mlx_lm_layout_file(path, want.name)
        if local is not None:
            return _slice_rows(read_json_rows(local), want, str(local))
        return _from_datasets(_load_folder(path), str(path), want, cache=cache)
    if is_hub_id(spec):
        return _from_datasets(_load_hub(spec), spec, want, cache=cache)
    raise DataError(f"{spec}: data file not found ({key})")


def available_splits(spec: str, cache: Loaded | None = None) -> list[str] | None:
    """Split names a folder or Hub dataset has (None for a single file)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return None
    if path.is_dir() and any((path / f).exists() for f in ("train.jsonl", "train.json")):
        return [s for s in ("train", "valid", "test", "eval") if (path / f"{s}.jsonl").exists() or (path / f"{s}.json").exists()]
    if path.is_dir():
        return list(_splits(str(path), _load_folder(path), cache).keys())
    return list(_splits(spec, _load_hub(spec), cache).keys())


# ---------------------------------------------------------------- local JSON / JSONL


def read_json_rows(path: Path) -> list[Row]:
    """(``file:line``, object) for every row; blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    rows: list[Row] = []
    if path.suffix == ".json" and not _looks_like_json_lines(text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None) or [data]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of objects")
        for i, obj in enumerate(data, 1):
            if not isinstance(obj, dict):
                raise DataError(f"{path}: item {i} is {type(obj).__name__}, expected an object")
            rows.append((f"{path}:{i}", obj))
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, found {type(obj).__name__}")
            rows.append((f"{path}:{lineno}", obj))
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty)")
    return rows


def _looks_like_json_lines(text: str) -> bool:
    """A ``.json`` file holding one object per line (what ``datasets``' ``to_json`` writes)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].lstrip().startswith("{"):
        return False
    try:
        json.loads(lines[0])
    except json.JSONDecodeError:
        return False
    return True


def _mlx_lm_layout_file(folder: Path, split: str) -> Path | None:
    """mlx-lm's data folder: ``train.jsonl`` and ``valid.jsonl`` (``test``/``eval`` also)."""
    names = {"train": ["train"], "valid": ["valid"], "eval": ["eval", "valid"]}.get(split, [split])
    if split in EVAL_SPLIT_ALIASES:
        names = [split, *[a for a in EVAL_SPLIT_ALIASES if a != split]]
    has_layout = any((folder / f"{n}{s}").exists() for n in ("train", "valid", "test") for s in LOCAL_SUFFIXES)
    if not has_layout:
        return None
    for name in names:
        for suffix in LOCAL_SUFFIXES:
            if (folder / f"{name}{suffix}").exists():
                return folder / f"{name}{suffix}"
    present = sorted(p.name for p in folder.iterdir() if p.suffix in LOCAL_SUFFIXES)
    raise DataError(f"{folder}: no split '{split}' (the folder has {', '.join(present)})")


def _slice_rows(rows: list[Row], want: SplitSpec, source: str) -> list[Row]:
    if not want.slice:
        return rows
    start, stop = absolute_slice(want, len(rows), source)
    return rows[start:stop]


def absolute_slice(want: SplitSpec, n: int, source: str) -> tuple[int, int]:
    """``datasets``' slice rules (``[:2000]``, ``[10%:]``, ``[-100:]``) on ``n`` rows.

    Unlike ``datasets`` (which clamps), a bound past the end or an empty slice is an error:
    ``train[:2000]`` on 500 rows would silently train on a quarter of what was asked."""
    m = re.fullmatch(r"\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\]", want.slice)
    if not m:
        raise DataError(f"{source}: split '{want}' has a slice that is not [start:stop] (rows or percent, e.g. [:2000], [10%:20%])")
    for bound in m.groups():
        if bound and not bound.endswith("%") and abs(int(bound)) > n:
            raise DataError(f"{source}: split '{want}' reaches past the end (the split has {n} rows)")
    try:
        from datasets import ReadInstruction

        instr = ReadInstruction.from_spec(f"{want.name}{want.slice}").to_absolute({want.name: n})
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError("slicing a split needs the 'datasets' package") from None
    except ValueError as err:
        raise DataError(f"{source}: split '{want}' does not fit its {n} rows ({_first_line(err)})") from None
    a = instr[0]
    start, stop = a.from_ or 0, n if a.to is None else a.to
    if stop <= start:
        raise DataError(f"{source}: split '{want}' selects no rows (the split has {n} rows)")
    return start, stop


# ---------------------------------------------------------------- datasets-backed sources

Loader = Callable[[], Any]  # returns a DatasetDict (or a dict of split -> Dataset)
Loaded = dict[str, Any]  # source -> what its loader returned


def _splits(source: str, loader: Loader, cache: Loaded | None) -> Any:
    if cache is None:
        return loader()
    if source not in cache:
        cache[source] = loader()
    return cache[source]


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError("reading this data needs the 'datasets' package (uv add datasets)") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _load_table_file(path: Path) -> Loader:
    def load() -> Any:
        ds = _import_datasets()
        try:
            if path.suffix == ".parquet":
                return {"train": ds.Dataset.from_parquet(str(path))}
            return {"train": _read_arrow_file(path)}
        except Exception as err:  # noqa: BLE001 - pyarrow/datasets raise many kinds
            raise DataError(f"{path}: cannot read ({_first_line(err)})") from None

    return load


def _read_arrow_file(path: Path) -> Any:
    import pyarrow as pa

    datasets = _import_datasets()
    with pa.memory_map(str(path)) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(source).read_all()
    return datasets.Dataset(table)


def _load_folder(path: Path) -> Loader:
    def load() -> Any:
        ds = _import_datasets()
        try:
            if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
                loaded = ds.load_from_disk(str(path))
                return loaded if isinstance(loaded, ds.DatasetDict) else {"train": loaded}
            return ds.load_dataset(str(path))
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001
            raise DataError(
                f"{path}: folder has no train.jsonl, and the datasets library cannot read it as a dataset folder "
                f"(data/train-*.parquet, JSON shards, save_to_disk output): {_first_line(err)}"
            ) from None

    return load


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether huggingface.co answers (False at once when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(repo: str) -> Loader:
    def load() -> Any:
        ds = _import_datasets()
        online = hub_reachable()
        if not online:
            ds.config.HF_HUB_OFFLINE = True
            try:
                import huggingface_hub.constants as hc

                hc.HF_HUB_OFFLINE = True
            except ImportError:  # pragma: no cover
                pass
        try:
            return ds.load_dataset(repo)
        except Exception as err:  # noqa: BLE001
            if not online:
                raise DataError(
                    f"{repo}: not in the local Hugging Face cache and the Hub cannot be reached (offline); "
                    "run once with network, or point the data key at a local copy"
                ) from None
            raise DataError(f"{repo}: cannot load from the Hub ({_first_line(err)})") from None

    return load


def _from_datasets(loader: Loader, source: str, want: SplitSpec, whole_file: bool = False, cache: Loaded | None = None) -> list[Row]:
    splits = _splits(source, loader, cache)
    names = list(splits.keys())
    name = want.name
    if whole_file:
        name = names[0]
    elif name not in splits:
        alias = next((a for a in EVAL_SPLIT_ALIASES if name in EVAL_SPLIT_ALIASES and a in splits), None)
        if alias is None:
            raise DataError(f"{source}: no split '{want.name}' (it has {', '.join(names)})")
        name = alias
    table = splits[name]
    n = len(table)
    start, stop = absolute_slice(SplitSpec(name, want.slice), n, source) if want.slice else (0, n)
    if start or stop != n:
        table = table.select(range(start, stop))
    label = source if whole_file else f"{source}[{name}]"
    return [(f"{label} row {start + i + 1}", dict(obj)) for i, obj in enumerate(table)]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
