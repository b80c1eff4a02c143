"""A run's metrics as CSV or JSONL: one format for ``rlhf-tui export`` and the history screen.

CSV columns are ``step`` and ``elapsed_s`` first, then every other key in the order it first
appears; training and eval rows share one table (eval rows are the ones with ``eval/`` keys),
each leaving the other's columns empty. ``None`` (e.g. SFT's ``kl``) becomes an empty cell,
floats keep their shortest round-tripping form. JSONL is the rows as ``metrics.jsonl`` has them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

from engine.errors import RunDirError
from engine.rundir import RunDirectory, atomic_write_text

Format = Literal["csv", "jsonl"]
Kind = Literal["train", "eval", "all"]
FIRST_COLUMNS = ("step", "elapsed_s")


def columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {k: None for k in FIRST_COLUMNS if any(k in r for r in rows)}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV text with a header line."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else _cell(v)) for k, v in row.items()})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # shortest round-tripping form
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def metrics_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def export_text(run_dir: str | Path, fmt: Format = "csv", kind: Kind = "all") -> str:
    """A run directory's metrics as CSV or JSONL text (``kind``: train rows, eval rows or all)."""
    from engine.api import read_metrics

    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"format must be 'csv' or 'jsonl', not {fmt!r}")
    rows = read_metrics(run_dir, kind)
    return metrics_csv(rows) if fmt == "csv" else metrics_jsonl(rows)


def export_beside(run_dir: str | Path, fmt: Format) -> Path:
    """Write ``<run id>-metrics.csv`` (or ``.jsonl``) in the run's own folder; return its path."""
    directory = RunDirectory.at(run_dir, must_exist=True)
    text = export_text(directory.path, fmt)
    if text.count("\n") <= (1 if fmt == "csv" else 0):
        raise RunDirError(f"{directory.path}: no metrics to export yet (metrics.jsonl is empty)")
    out = directory.path / f"{directory.id}-metrics.{fmt}"
    atomic_write_text(out, text)
    return out


__all__ = ["export_beside", "export_text", "metrics_csv", "metrics_jsonl"]
