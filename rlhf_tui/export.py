"""``rlhf-tui export RUN_DIR``: a run's metrics as CSV or JSONL (format: engine.metrics_export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.metrics_export import Format, Kind, export_text


def write_export(run_dir: str | Path, out: str | Path, fmt: Format | None = None, kind: Kind = "all") -> Path:
    """Write the export to ``out``; the format defaults to the file's suffix (.csv or .jsonl)."""
    from engine.rundir import atomic_write_text

    path = Path(out).expanduser()
    fmt = fmt or ("jsonl" if path.suffix in (".jsonl", ".json") else "csv")
    text = export_text(run_dir, fmt, kind)
    atomic_write_text(path, text)
    return path


def run_export_command(args: Any) -> int:
    """``rlhf-tui export RUN_DIR [--format csv|jsonl|tensorboard] [--kind all|train|eval] [--output FILE|DIR]``."""
    import sys

    from engine.rundir import RunDirectory

    RunDirectory.at(args.run_dir, must_exist=True)
    if args.format == "tensorboard":
        from engine.reporting import export_tensorboard

        path = export_tensorboard(args.run_dir, args.output)
        print(f"wrote {path} (view it: tensorboard --logdir {path.parent})", file=sys.stderr)
        return 0
    if args.output:
        path = write_export(args.run_dir, args.output, args.format, args.kind)
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(export_text(args.run_dir, args.format or "csv", args.kind))
    return 0
