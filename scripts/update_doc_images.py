"""Copy console pictures from the SVG snapshot tests into docs/images/ (README's screenshot).

    uv run python scripts/update_doc_images.py          # copy
    uv run python scripts/update_doc_images.py --check  # exit 1 if a copy differs from its snapshot

The snapshots are written by tests/test_app_snapshots.py (pytest-textual-snapshot), so
the README shows the console exactly as the tests see it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOTS = ROOT / "tests" / "__snapshots__" / "test_app_snapshots"
IMAGES = {
    "console.svg": "test_monitor_completed.raw",
    "presets.svg": "test_presets_screen.raw",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/images is out of date")
    args = parser.parse_args(argv)
    out_dir = ROOT / "docs" / "images"
    stale = []
    for image, snapshot in IMAGES.items():
        src = SNAPSHOTS / snapshot
        if not src.exists():
            print(f"missing snapshot {src.relative_to(ROOT)}", file=sys.stderr)
            return 1
        dst = out_dir / image
        if args.check:
            if not dst.exists() or dst.read_bytes() != src.read_bytes():
                stale.append(image)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        print(f"docs/images/{image} <- {src.relative_to(ROOT)}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run uv run python scripts/update_doc_images.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
