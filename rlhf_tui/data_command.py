"""``rlhf-tui data PRESET``: the decoded text a run trains on, as the model sees it.

    rlhf-tui data PRESET [--set k=v ...] [--split train|eval] [--show N] [--json]

A person gets each record's prompt and answers with prompt / answer / special-token spans
in colour, then a summary (records, token-length percentiles, truncation, shape, chat
template). ``--json`` writes one JSON object per record on standard output (``prompt``,
``chosen``, ``rejected`` or ``completion``, and ``*_tokens`` counts) and the summary as one
more line with a ``summary`` key. ``--show 0`` shows every record.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

STYLES = {"prompt": "cyan", "answer": "green", "special": "bold magenta"}
TITLES = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "completion": "completion"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", help="preset name or .toml path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. data.train=trl-lib/ultrafeedback_binarized")
    p.add_argument("--split", choices=("train", "eval"), default="train", help="which data to show (default: train)")
    p.add_argument("--show", type=int, default=3, metavar="N", help="records to show (default 3; 0 = all)")
    p.add_argument("--json", action="store_true", help="JSON Lines on standard output")


def run(args: argparse.Namespace) -> int:
    from engine.data import RunData, data_kind
    from engine.data_view import summarise, view_records
    from engine.errors import ConfigError
    from engine.models import load_tokenizer_for
    from engine.presets import load_preset

    cfg = load_preset(args.preset, args.overrides)
    kind = data_kind(cfg.algorithm)
    if kind is None:
        raise ConfigError(f"algorithm {cfg.algorithm!r} reads its data its own way; 'rlhf-tui data' shows pair, SFT and prompt data")
    data = RunData(cfg)
    records = data.records(args.split, kind)  # data problems surface before any tokenizer download
    if not records:
        raise ConfigError(f"{args.preset}: no {args.split} data (set data.eval, or data.eval_split for a dataset with splits)")
    data.tokenizer = load_tokenizer_for(cfg)
    views = view_records(data, args.split, kind, args.show)
    summary = summarise(data, args.split, kind)
    if args.json:
        out = sys.stdout
        for v in views:
            out.write(json.dumps(v.as_json(), ensure_ascii=False) + "\n")
        out.write(json.dumps({"summary": summary}, ensure_ascii=False) + "\n")
        return 0
    _print_human(views, summary)
    return 0


def _print_human(views: list[Any], summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    for v in views:
        console.rule(Text(f"{v.where}  ·  {v.shape}" + ("  ·  truncated" if v.truncated else ""), style="bold"))
        for key, spans in v.spans.items():
            console.print(Text(f"{TITLES.get(key, key)} ({v.tokens[key]} tokens)", style="bold dim"))
            line = Text()
            for span in spans:
                line.append(span.text, style=STYLES[span.kind])
            console.print(line)
    console.rule(Text("summary", style="bold"))
    s = summary
    rows = [
        ("data", f"{s['source']} ({s['source_kind']}, {_split_words(s['split_name'])})"),
        ("records", f"{s['records']:,}" + (f" (token statistics over a sample of {s['sampled']:,})" if s["sampled"] < s["records"] else "")),
        ("shape", f"{s['shape']}: {s['shape_help']}"),
        ("chat template", ("applied" if s["chat_template"] else "not applied") + f" (data.chat_template = {s['chat_template_mode']})"),
        ("truncated", f"{s['truncated']:,} of {s['sampled']:,} over model.max_length = {s['max_length']}"),
    ]
    for key, pct in s["tokens"].items():
        rows.append((f"{key} tokens", "  ".join(f"{q} {v:,}" for q, v in pct.items())))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        console.print(Text(f"{k:<{width}}  ", style="bold") + Text(v))
    console.print(Text("colours: ", style="dim") + Text("prompt ", style=STYLES["prompt"]) + Text("answer ", style=STYLES["answer"]) + Text("<special tokens>", style=STYLES["special"]))


def _split_words(split: str) -> str:
    if split == "file":
        return "the whole file"
    if split.startswith("file["):
        return "rows " + split[4:]
    return f"split {split}"
