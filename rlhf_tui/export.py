"""Export a run's metrics as CSV or JSONL (``rlhf-tui export RUN_DIR``; the console reuses it).

CSV columns are ``step`` and ``elapsed_s`` first, then every other key in the order it first
appears; training and eval rows share one table, each leaving the other's columns empty.
``None`` (e.g. SFT's ``kl``) becomes an empty cell. JSONL is the rows as they are.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

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


def export_metrics(run_dir: str | Path, fmt: Format = "csv", kind: Kind = "all") -> str:
    """A run directory's metrics as CSV or JSONL text (``kind``: train rows, eval rows or all)."""
    from engine.api import read_metrics

    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"format must be 'csv' or 'jsonl', not {fmt!r}")
    rows = read_metrics(run_dir, kind)
    return metrics_csv(rows) if fmt == "csv" else metrics_jsonl(rows)


def write_export(run_dir: str | Path, out: str | Path, fmt: Format | None = None, kind: Kind = "all") -> Path:
    """Write the export to ``out``; the format defaults to the file's suffix (.csv or .jsonl)."""
    from engine.rundir import atomic_write_text

    path = Path(out).expanduser()
    fmt = fmt or ("jsonl" if path.suffix in (".jsonl", ".json") else "csv")
    text = export_metrics(run_dir, fmt, kind)
    atomic_write_text(path, text)
    return path


def run_export_command(args: Any) -> int:
    """``rlhf-tui export RUN_DIR [--format csv|jsonl] [--kind all|train|eval] [--output FILE]``."""
    import sys

    from engine.rundir import RunDirectory

    RunDirectory.at(args.run_dir, must_exist=True)
    if args.output:
        path = write_export(args.run_dir, args.output, args.format, args.kind)
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(export_metrics(args.run_dir, args.format or "csv", args.kind))
    return 0
