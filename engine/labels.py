"""Human preference labels on disk: the label file, resume, undo, and agreement between labellers.

A label file is a JSON-lines preference file that every reader of the engine accepts as it
is (``engine.data.load_pairs``, DPO and reward-model training, the pair inspector): each line
holds ``prompt``/``chosen``/``rejected`` plus provenance::

    {"prompt": ..., "chosen": ..., "rejected": ..., "label": "a" | "b" | "c" | "d" | "edit",
     "n": 7, "labeller": "ada", "time": "2026-11-26T04:10:00+00:00",
     "model": "builtin:tiny-sorter", "checkpoint": "runs/x/checkpoints/step-000050" | null,
     "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 16},
     "completions": [A, B],            # what the labeller was shown, in order (2 to 4)
     "edited": "a" | "b", "original": text}   # only for "edit": the pane rewritten

A label names the best pane. With more than two completions shown, picking the best writes
one pair per other completion (best against it); those rows share ``"group"``.

Labels that are not a usable pair (``tie``, ``both_bad``, ``skip``) go to a sidecar file next
to it, ``<stem>.skipped.jsonl``, with the same provenance and the two completions but no
``chosen``/``rejected``, so training never sees them and nothing is lost.

``n`` numbers rows across both files (1, 2, ...); undo removes the labeller's latest label
(its row with the highest ``n``, with the rest of its group). Every append is one ``write`` of one line followed by ``fsync``; undo rewrites the
file through a temporary file and ``os.replace``. A crash therefore loses at most the label
being written; a torn last line is cut off the next time the file is opened for writing.
Appends and undos from several processes are serialised with an advisory lock file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import DataError
from engine.rundir import atomic_write_bytes

PANES = ("a", "b", "c", "d")  # up to four completions per prompt
PAIR_LABELS = (*PANES, "edit")  # a pane picked as the best, or a rewrite
OTHER_LABELS = ("tie", "both_bad", "skip")
LABELS = PAIR_LABELS + OTHER_LABELS


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sidecar_path(path: Path) -> Path:
    """Where ties, both-bad and skips of ``path`` are kept: ``<stem>.skipped.jsonl``."""
    return path.with_name(f"{path.stem}.skipped.jsonl")


def prompt_key(prompt: Any) -> str:
    """A prompt (text or chat messages) as a hashable, order-stable string."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Label:
    """One judgement of a prompt and the completions shown for it (panes a, b, c, d)."""

    prompt: Any
    completions: tuple[str, ...]
    label: str  # one of LABELS; "a".."d": that pane is the best
    labeller: str
    model: str
    checkpoint: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    edited: str | None = None  # for "edit": which pane was rewritten
    edit_text: str | None = None  # for "edit": the labeller's answer (becomes chosen)

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}, not {self.label!r}")
        if not 2 <= len(self.completions) <= len(PANES):
            raise ValueError(f"a label compares 2 to {len(PANES)} completions, not {len(self.completions)}")
        panes = PANES[: len(self.completions)]
        if self.label in PANES and self.label not in panes:
            raise ValueError(f"pane {self.label!r} was not shown ({len(self.completions)} completions)")
        if self.label == "edit" and (self.edited not in panes or self.edit_text is None):
            raise ValueError("an edit label needs the pane edited and the edited text")

    @property
    def is_pair(self) -> bool:
        return self.label in PAIR_LABELS

    def rows(self, n: int, time: str) -> list[dict[str, Any]]:
        """The JSON objects written for this label, numbered from ``n`` (key order fixed, so the
        bytes are reproducible). Picking the best of N > 2 completions gives N - 1 pairs (the
        best against each other one), which share ``group`` (the first row's ``n``)."""
        shown = list(self.completions)
        if self.label in PANES:
            best = PANES.index(self.label)
            pairs = [(shown[best], shown[i]) for i in range(len(shown)) if i != best]
        elif self.label == "edit":
            # the labeller's rewrite against the model answer it corrects
            pairs = [(self.edit_text, shown[PANES.index(self.edited)])]  # type: ignore[arg-type]
        else:
            pairs = [None]  # type: ignore[list-item]
        out = []
        for i, pair in enumerate(pairs):
            row: dict[str, Any] = {"prompt": self.prompt}
            if pair is not None:
                row |= {"chosen": pair[0], "rejected": pair[1]}
            row |= {
                "label": self.label,
                "n": n + i,
                "labeller": self.labeller,
                "time": time,
                "model": self.model,
                "checkpoint": self.checkpoint,
                "sampling": dict(self.sampling),
                "completions": shown,
            }
            if len(pairs) > 1:
                row["group"] = n
            if self.label == "edit":
                row |= {"edited": self.edited, "original": row["rejected"]}
            out.append(row)
        return out

    def row(self, n: int, time: str) -> dict[str, Any]:
        """The single row of a two-completion label."""
        rows = self.rows(n, time)
        if len(rows) != 1:
            raise ValueError("this label writes several rows; use rows()")
        return rows[0]


def encode_row(row: dict[str, Any]) -> bytes:
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


class LabelFile:
    """A label file and its ``.skipped.jsonl`` sidecar."""

    def __init__(self, path: str | Path, *, clock: Callable[[], str] = utc_now) -> None:
        self.path = Path(path).expanduser()
        self.sidecar = sidecar_path(self.path)
        self.clock = clock

    # -------------------------------------------------------------- reading

    def _read(self, path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror})") from None
        rows = []
        lines = data.split(b"\n")
        for lineno, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                if lineno == len(lines):
                    continue  # a torn last line from a crash mid-write: not a label
                raise DataError(f"{path}:{lineno}: invalid JSON in the label file ({err})") from None
            if not isinstance(obj, dict) or "prompt" not in obj or "label" not in obj:
                raise DataError(f"{path}:{lineno}: not a label row (needs 'prompt' and 'label')")
            rows.append(obj)
        return rows

    def rows(self) -> list[dict[str, Any]]:
        """Every label of both files, in the order they were made (by ``n``)."""
        rows = self._read(self.path) + self._read(self.sidecar)
        return sorted(rows, key=lambda r: int(r.get("n", 0)))

    def pairs(self) -> list[dict[str, Any]]:
        return self._read(self.path)

    def count(self, labeller: str | None = None) -> int:
        return sum(1 for r in self.rows() if labeller is None or r.get("labeller") == labeller)

    def done_prompts(self, labeller: str) -> set[str]:
        """Prompts this labeller has already labelled (any label, skips included)."""
        return {prompt_key(r["prompt"]) for r in self.rows() if r.get("labeller") == labeller}

    def done_items(self, labeller: str) -> set[tuple[str, tuple[str, ...]]]:
        """(prompt, completions) items this labeller has already judged."""
        return {item_key(r) for r in self.rows() if r.get("labeller") == labeller and len(r.get("completions", ())) >= 2}

    # -------------------------------------------------------------- writing

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(f".{self.path.name}.lock")
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _repair(self, path: Path) -> None:
        """Cut a torn last line (a crash mid-append) so the next append starts on a fresh line."""
        if not path.exists() or path.stat().st_size == 0:
            return
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
            keep = data.rfind(b"\n") + 1
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())

    def repair(self) -> None:
        """Cut a torn last line left by a crash, so every reader sees whole rows only."""
        if not self.path.exists() and not self.sidecar.exists():
            return
        with self._locked():
            self._repair(self.path)
            self._repair(self.sidecar)

    def append(self, label: Label) -> dict[str, Any]:
        """Write one label (one write of its line(s), fsync'd); returns its first row."""
        with self._locked():
            target = self.path if label.is_pair else self.sidecar
            self._repair(self.path)
            self._repair(self.sidecar)
            n = max((int(r.get("n", 0)) for r in self.rows()), default=0) + 1
            rows = label.rows(n, self.clock())
            data = b"".join(encode_row(r) for r in rows)  # one write: a label's rows land together
            try:
                fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as err:
                raise DataError(f"{target}: cannot write the label ({err.strerror or err})") from None
            return rows[0]

    def undo(self, labeller: str) -> dict[str, Any] | None:
        """Remove this labeller's latest label (all rows of a best-of-N group, from whichever
        file holds it); return its first row."""
        with self._locked():
            best: tuple[int, Path, dict[str, Any]] | None = None  # (n, file, row)
            for path in (self.path, self.sidecar):
                for obj in _parsed_lines(path):
                    if isinstance(obj, dict) and obj.get("labeller") == labeller:
                        n = int(obj.get("n", 0))
                        if best is None or n > best[0]:
                            best = (n, path, obj)
            if best is None:
                return None
            _, path, last = best
            group = last.get("group")

            def is_undone(obj: Any) -> bool:
                if not isinstance(obj, dict) or obj.get("labeller") != labeller:
                    return False
                return obj.get("n") == last.get("n") if group is None else obj.get("group") == group

            lines = path.read_bytes().split(b"\n")
            removed = [obj for obj in _parsed_lines(path) if is_undone(obj)]
            kept = b"\n".join(line for line, obj in zip(lines, _parse_each(lines), strict=True) if not is_undone(obj))
            _replace(path, kept)
            return min(removed, key=lambda r: int(r.get("n", 0)))


def _parse_each(lines: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for raw in lines:
        try:
            out.append(json.loads(raw) if raw.strip() else None)
        except (json.JSONDecodeError, UnicodeDecodeError):
            out.append(None)
    return out


def _parsed_lines(path: Path) -> list[Any]:
    return _parse_each(path.read_bytes().split(b"\n")) if path.exists() else []


def _replace(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, error=DataError, doing="cannot rewrite the label file")


# ---------------------------------------------------------------- relabelling and agreement


def item_key(row: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """What was judged: the prompt and the completions shown, order-free."""
    return prompt_key(row["prompt"]), tuple(sorted(row["completions"]))


ORDINALS = ("first", "second", "third", "fourth")


def verdict(row: dict[str, Any]) -> str | None:
    """A label in order-free terms: which of the sorted completions was preferred ("first",
    "second", ...), "tie", "both_bad", or None for a skip. An edit counts as preferring the
    pane that was rewritten (the labeller kept it as the better starting point)."""
    label = row["label"]
    if label == "skip":
        return None
    if label in ("tie", "both_bad"):
        return label
    shown = list(row["completions"])
    preferred = shown[PANES.index(row["edited"] if label == "edit" else label)]
    if shown.count(preferred) > 1:
        return "tie"  # the same text was shown twice
    return ORDINALS[sorted(shown).index(preferred)]


@dataclass(frozen=True)
class Agreement:
    """How often two labellers gave the same verdict on the same items."""

    labeller_a: str
    labeller_b: str
    shared: int  # items both judged (skips excluded)
    agreed: int
    kappa: float | None  # Cohen's kappa; None when chance agreement is 1

    @property
    def rate(self) -> float | None:
        return self.agreed / self.shared if self.shared else None


def agreement(rows: Iterable[dict[str, Any]], labeller_a: str, labeller_b: str) -> Agreement:
    """Agreement of two labellers on the items both judged (each one's latest verdict)."""
    latest: dict[str, dict[tuple[str, tuple[str, ...]], str]] = {labeller_a: {}, labeller_b: {}}
    for r in sorted(rows, key=lambda r: int(r.get("n", 0))):
        who = r.get("labeller")
        if who in latest and len(r.get("completions", ())) >= 2:
            v = verdict(r)
            if v is not None:
                latest[who][item_key(r)] = v
    shared = sorted(set(latest[labeller_a]) & set(latest[labeller_b]))
    pairs = [(latest[labeller_a][k], latest[labeller_b][k]) for k in shared]
    agreed = sum(1 for x, y in pairs if x == y)
    kappa = None
    if pairs:
        n = len(pairs)
        ca, cb = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
        expected = sum(ca[c] * cb[c] for c in set(ca) | set(cb)) / (n * n)
        if expected < 1:
            kappa = (agreed / n - expected) / (1 - expected)
    return Agreement(labeller_a, labeller_b, len(pairs), agreed, kappa)


def agreements(rows: Iterable[dict[str, Any]]) -> list[Agreement]:
    """Agreement for every pair of labellers that judged at least one item in common."""
    rows = list(rows)
    names = sorted({str(r.get("labeller")) for r in rows})
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ag = agreement(rows, a, b)
            if ag.shared:
                out.append(ag)
    return out


def items_to_relabel(rows: Iterable[dict[str, Any]], labeller: str) -> list[tuple[Any, tuple[str, ...]]]:
    """Items other labellers judged that ``labeller`` has not: (prompt, completions), first seen first."""
    rows = sorted(rows, key=lambda r: int(r.get("n", 0)))
    done = {item_key(r) for r in rows if r.get("labeller") == labeller and len(r.get("completions", ())) >= 2}
    out, seen = [], set()
    for r in rows:
        if r.get("labeller") == labeller or len(r.get("completions", ())) < 2:
            continue
        key = item_key(r)
        if key in done or key in seen:
            continue
        seen.add(key)
        out.append((r["prompt"], tuple(r["completions"])))
    return out


# ---------------------------------------------------------------- training on labels


def snapshot_pairs(label_file: str | Path, dest: str | Path) -> dict[str, Any]:
    """Copy the usable pairs of a label file, as they are now, to ``dest``; return a record
    of what was copied (for ``data_provenance.json`` in the run directory)."""
    src = Path(label_file).expanduser()
    if not src.exists():
        raise DataError(f"{src}: no label file yet (label some pairs first)")
    data = src.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]  # whole lines only
    rows = LabelFile(src).pairs()
    if not rows:
        raise DataError(f"{src}: no usable pairs yet (ties, both-bad and skips are not pairs)")
    out = Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    _replace(out, keep)
    return {
        "label_file": str(src.resolve()),
        "copied_to": str(out.resolve()),
        "rows": len(rows),
        "label_numbers": [int(r.get("n", 0)) for r in rows],
        "sha256": hashlib.sha256(keep).hexdigest(),
        "labellers": dict(Counter(str(r.get("labeller")) for r in rows)),
        "labels": dict(Counter(str(r.get("label")) for r in rows)),
        "models": sorted({f"{r.get('model')}" + (f" @ {r['checkpoint']}" if r.get("checkpoint") else "") for r in rows}),
    }
