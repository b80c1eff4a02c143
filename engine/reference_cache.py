"""Reference log-probs computed when a batch first needs them, and kept on disk.

The reference policy's (chosen, rejected) log-probs of a pair depend on exactly three
things: the pair's token ids (which already carry the row's content, the chat template,
truncation and ``max_length``), the reference model (base weights, ``init_from``, dtype,
quantization) and how they are summed (``ipo`` averages per token). A pair's key hashes
all three, so a resumed run or a second epoch reuses what it computed, and a run whose
data, tokenisation or model changed recomputes instead of reusing stale values.

On disk: ``RUN_DIR/reference_logps.jsonl``, one ``{"key", "chosen", "rejected"}`` line per
pair, appended after each computed batch (a torn last line from a crash is skipped).
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FILE_NAME = "reference_logps.jsonl"


def model_identity(cfg: Any, extra: dict[str, Any] | None = None) -> str:
    """A short hash of what makes the reference model what it is."""
    from engine.config import resolve_path

    m = cfg.model
    ident: dict[str, Any] = {
        "path": resolve_path(cfg, m.path),
        "init_from": resolve_path(cfg, m.init_from) if m.init_from else "",
        "dtype": m.dtype,
        "quantize": getattr(m, "quantize", ""),
        **(extra or {}),
    }
    for key in ("path", "init_from"):
        folder = Path(ident[key]).expanduser() if ident[key] and not str(ident[key]).startswith("builtin:") else None
        if folder is not None and folder.exists():
            ident[key + "_files"] = _file_stamps(folder)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _file_stamps(folder: Path) -> list[tuple[str, int]]:
    """(name, size) of the weight files: a changed checkpoint changes the identity."""
    files = [folder] if folder.is_file() else sorted(folder.glob("*.safetensors"))
    return [(f.name, f.stat().st_size) for f in files]


def pair_key(model_id: str, prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int]) -> str:
    h = hashlib.sha256(model_id.encode())
    for ids in (prompt, chosen, rejected):
        h.update(len(ids).to_bytes(4, "little"))
        h.update(array("i", ids).tobytes())
    return h.hexdigest()[:32]


class ReferenceCache:
    """Key -> (chosen, rejected) log-probs, in memory and (optionally) appended to a file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.values: dict[str, tuple[float, float]] = {}
        self.loaded = 0
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    self.values[str(row["key"])] = (float(row["chosen"]), float(row["rejected"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash: recomputed when needed
        self.loaded = len(self.values)

    def missing(self, keys: Sequence[str]) -> list[int]:
        return [i for i, k in enumerate(keys) if k not in self.values]

    def get(self, keys: Sequence[str]) -> list[tuple[float, float]]:
        return [self.values[k] for k in keys]

    def add(self, keys: Sequence[str], values: Sequence[tuple[float, float]]) -> None:
        fresh = [(k, v) for k, v in zip(keys, values, strict=True) if k not in self.values]
        for k, v in fresh:
            self.values[k] = v
        if self.path is None or not fresh:
            return
        text = "".join(json.dumps({"key": k, "chosen": c, "rejected": r}) + "\n" for k, (c, r) in fresh)
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            self.path = None  # a full disk: keep going in memory (recomputed on resume)

    def fill(self, keys: Sequence[str], compute: Callable[[list[int]], list[tuple[float, float]]]) -> list[tuple[float, float]]:
        """Values for ``keys``, computing (``compute(positions)``) only the missing ones."""
        todo = self.missing(keys)
        if todo:
            # one key may appear twice in a batch (a duplicated row): compute it once
            first: dict[str, int] = {}
            for i in todo:
                first.setdefault(keys[i], i)
            positions = list(first.values())
            self.add([keys[i] for i in positions], compute(positions))
        return self.get(keys)
