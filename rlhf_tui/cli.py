"""Command line: the console (default), and headless ``run``, ``resume``, ``monitor``, ``presets``.

    rlhf-tui [PRESET] [--start] [--set key=value ...]
    rlhf-tui run PRESET [--set key=value ...] [--out DIR [--overwrite]] [--runs-root DIR] [--debug]
    rlhf-tui resume RUN_DIR [--set train.max_steps=N]
    rlhf-tui monitor RUN_DIR
    rlhf-tui presets
    rlhf-tui export RUN_DIR [--format csv|jsonl|tensorboard] [--kind all|train|eval] [--output FILE]
    rlhf-tui fuse RUN_DIR [--step N] --out DIR [--dequantize]
    rlhf-tui chat RUN_DIR [--step N] [--max-tokens N] [--temp T]
    rlhf-tui data PRESET [--set k=v ...] [--split train|eval] [--show N] [--json]

Bad input gives one line on stderr and exit code 2 (no traceback unless ``--debug``);
Ctrl-C during a headless run checkpoints and exits 130.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any

SUBCOMMANDS = ("run", "resume", "monitor", "presets", "export", "fuse", "data", "chat")
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_CANCELLED = 130
STOP_GRACE_S = 120.0  # multi-rank runs: how long a stop request may go unanswered


def _app_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlhf-tui",
        description="A terminal console for preference tuning on MLX. "
        "Subcommands: run PRESET | resume RUN_DIR | monitor RUN_DIR | presets | export RUN_DIR | fuse RUN_DIR --out DIR | chat RUN_DIR (see 'rlhf-tui run --help').",
    )
    p.add_argument("preset", nargs="?", default=None, help="preset name or .toml path (default: tiny-dpo)")
    p.add_argument("--start", action="store_true", help="start training at once, in the run monitor")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.max_steps=50")
    p.add_argument("--runs-root", default="runs", help="where runs are written (default: ./runs)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _sub_parser(cmd: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"rlhf-tui {cmd}")
    if cmd == "run":
        p.add_argument("preset", help="preset name (see 'rlhf-tui presets') or path to a .toml file")
        p.add_argument("--out", default=None, help="run directory (default: RUNS_ROOT/<preset>-<time>)")
        p.add_argument("--runs-root", default="runs", help="folder for new run directories (default: ./runs)")
        p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (deletes that run's files; other files stay)")
    elif cmd == "resume":
        p.add_argument("run_dir", help="a run directory written by an earlier run")
    elif cmd == "export":
        p.add_argument("run_dir", help="a run directory")
        p.add_argument("--format", choices=("csv", "jsonl", "tensorboard"), default=None, help="default: from --output's suffix, else csv; tensorboard: event files in RUN_DIR/tensorboard/ (or --output DIR)")
        p.add_argument("--kind", choices=("all", "train", "eval"), default="all", help="which rows (default: all)")
        p.add_argument("--output", "-o", default=None, help="file to write (default: standard output)")
    elif cmd == "chat":
        p.add_argument("run_dir", help="a run directory: its trained model answers beside its base model")
        p.add_argument("--step", type=int, default=None, help="chat with checkpoint N instead of the latest weights")
        p.add_argument("--max-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
        p.add_argument("--temp", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    elif cmd == "fuse":
        p.add_argument("run_dir", help="a run directory (its latest weights, or --step N)")
        p.add_argument("--out", required=True, help="folder for the standalone mlx-lm model (must not exist or be empty)")
        p.add_argument("--step", type=int, default=None, help="fuse checkpoint N instead of the latest weights")
        p.add_argument("--dequantize", action="store_true", help="write a dequantized model (for a quantized base)")
    elif cmd == "monitor":
        p.add_argument("run_dir", help="a run directory another process is writing")
    elif cmd == "data":
        from rlhf_tui.data_command import add_arguments

        add_arguments(p)
    if cmd in ("run", "resume"):
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        p.add_argument("--quiet", action="store_true", help="print only the final summary line")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("-h", "--help") for a in argv):
        from engine.blas import reexec_with_fast_blas

        reexec_with_fast_blas(["-m", "rlhf_tui", *argv])
    if argv and argv[0] in SUBCOMMANDS:
        cmd = argv[0]
        args = _sub_parser(cmd).parse_args(argv[1:])
    else:
        cmd = "app"
        args = _app_parser().parse_args(argv)
    try:
        if cmd == "run":
            return _cmd_run(args)
        if cmd == "resume":
            return _cmd_resume(args)
        if cmd == "presets":
            return _cmd_presets()
        if cmd == "monitor":
            return _cmd_monitor(args)
        if cmd == "fuse":
            return _cmd_fuse(args)
        if cmd == "chat":
            return _cmd_chat(args)
        if cmd == "data":
            from rlhf_tui import data_command

            return data_command.run(args)
        if cmd == "export":
            from rlhf_tui.export import run_export_command

            return run_export_command(args)
        return _cmd_app(args)
    except Exception as err:  # noqa: BLE001
        from engine.errors import EngineError

        if args.debug or not isinstance(err, EngineError):
            if not isinstance(err, EngineError):
                import traceback

                traceback.print_exc()
                return EXIT_FAILED
            raise
        print(f"rlhf-tui: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ------------------------------------------------------------------ headless runs


def _cmd_run(args: argparse.Namespace) -> int:
    from engine.presets import load_preset
    from engine.run import Run

    cfg = load_preset(args.preset, args.overrides)
    return _drive(Run(cfg, out_dir=args.out, runs_root=args.runs_root, overwrite=args.overwrite), args)


def _cmd_resume(args: argparse.Namespace) -> int:
    from engine.run import resume_run

    return _drive(resume_run(args.run_dir, args.overrides), args)


def _drive(run: Any, args: argparse.Namespace) -> int:
    """Train in a thread, print progress, turn Ctrl-C/SIGINT into a clean cancel."""
    from engine.blas import blas_hint
    from engine.distributed import launched, launched_rank

    rank = launched_rank()  # under mlx.launch only rank 0 reports progress
    printer = ProgressPrinter(quiet=args.quiet)
    if rank == 0:
        run.subscribe(printer)
    else:  # other ranks print nothing but still learn why a run failed (for the exit code)
        from engine import events as ev

        run.subscribe(lambda e: printer(e) if isinstance(e, ev.RunFailed) else None)
    hint = blas_hint()
    if hint and not args.quiet and rank == 0:
        print(f"note: {hint}", file=sys.stderr)

    # A rank whose peers died can wait in a collective for ever (NCCL has no timeout), and
    # mlx.launch waits for it after sending SIGTERM: once asked to stop, a rank that hears
    # nothing from its run for STOP_GRACE_S seconds exits without a checkpoint.
    grace = float(os.environ.get("RLHF_TUI_STOP_GRACE_S", STOP_GRACE_S)) if launched() else None
    heard = [time.monotonic()]
    run.subscribe(lambda e: heard.__setitem__(0, time.monotonic()))
    stop_asked: list[float] = []

    def on_sigint(signum: int, frame: Any) -> None:
        if run.status == "cancelled" or run.cancel_requested:
            raise KeyboardInterrupt
        if rank == 0:
            print("\ncancelling after this step (Ctrl-C again to abort without a checkpoint)...", file=sys.stderr)
        stop_asked.append(time.monotonic())
        run.cancel()

    old = signal.signal(signal.SIGINT, on_sigint)
    old_term = signal.signal(signal.SIGTERM, on_sigint)
    try:
        run.start()
        while run._thread is not None and run._thread.is_alive():
            run.join(0.2)
            if grace is not None and stop_asked and time.monotonic() - max(stop_asked[0], heard[0]) > grace:
                print(f"rlhf-tui: error (rank {rank}): no progress {grace:.0f} s after the stop request (the other ranks are gone?); exiting without a checkpoint", file=sys.stderr, flush=True)
                os._exit(EXIT_FAILED)
    finally:
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)
    summary = run.summary
    printer.finish()
    status = summary.get("status")
    if status == "failed":
        if args.debug and printer.traceback:
            print(printer.traceback, file=sys.stderr)
        who = f" (rank {rank})" if rank else ""
        print(f"rlhf-tui: error{who}: {summary.get('error')}", file=sys.stderr)
        resumed_nothing = "attempts" in summary and summary.get("last_checkpoint") is None
        if summary.get("run_dir") and not resumed_nothing:  # (a resume that loaded nothing wrote nothing)
            step = summary.get("last_checkpoint")
            saved = "no checkpoint was written" if step is None else f"last checkpoint: step {step}"
            print(f"run directory: {summary['run_dir']} ({saved})", file=sys.stderr)
        return EXIT_BAD_INPUT if printer.bad_input else EXIT_FAILED
    return EXIT_CANCELLED if status == "cancelled" else 0


class ProgressPrinter:
    """Events -> terminal: one live line on a TTY, plain lines otherwise."""

    def __init__(self, quiet: bool = False, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self.total = 0
        self.start_step = 0
        self.t0 = time.time()
        self.last_print = 0.0
        self.traceback = ""
        self.bad_input = False
        self.lock = threading.Lock()
        self.live = False
        self.last_eval = ""

    def _line(self, text: str) -> None:
        with self.lock:
            if self.live:
                self.stream.write("\r\033[K")
                self.live = False
            self.stream.write(text + "\n")
            self.stream.flush()

    def _live(self, text: str) -> None:
        with self.lock:
            self.stream.write("\r\033[K" + text[:200])
            self.stream.flush()
            self.live = True

    def __call__(self, e: Any) -> None:
        from engine import events as ev
        from rlhf_tui.monitoring import duration

        if isinstance(e, ev.RunFailed):
            self.traceback = e.traceback
            self.bad_input = e.bad_input
            return
        if self.quiet:
            if isinstance(e, ev.RunFinished | ev.RunCancelled):
                self._line(_summary_line(e.summary))
            return
        if isinstance(e, ev.RunStarted):
            self.total, self.start_step, self.t0 = e.total_steps, e.start_step, time.time()
            self._line(f"run {e.run_id}: {e.algorithm}, {e.total_steps} steps, world size {e.world_size} -> {e.run_dir}")
        elif isinstance(e, ev.StepMetrics):
            m = e.metrics
            done = e.step - self.start_step
            rate = (time.time() - self.t0) / max(done, 1)
            eta = rate * (self.total - e.step)
            text = f"step {e.step:>5}/{self.total}  loss {_f(m.get('loss'))}  kl {_f(m.get('kl'))}  reward {_f(m.get('reward'))}  {_f(m.get('tokens_per_sec'), 0)} tok/s  ETA {duration(eta)}{self.last_eval}"
            if self.tty:
                self._live(text)
            elif time.time() - self.last_print >= 2.0 or e.step == self.total:
                self.last_print = time.time()
                self._line(text)
        elif isinstance(e, ev.EvalMetrics):
            key = next((k for k in ("eval/task_score", "eval/rewards/accuracies", "eval/accuracy", "eval/reward") if k in e.metrics), None)
            if key:
                self.last_eval = f"  {key} {_f(e.metrics[key])}"
                self._line(f"eval at step {e.step}: " + "  ".join(f"{k} {_f(v)}" for k, v in e.metrics.items() if k.startswith("eval/") and k.count("/") <= 2 and v is not None))
        elif isinstance(e, ev.LogLine | ev.Alert):
            prefix = "ALERT: " if isinstance(e, ev.Alert) else ""
            self._line(prefix + e.text)
        elif isinstance(e, ev.CheckpointSaved):
            self._line(f"checkpoint: {e.path}")
        elif isinstance(e, ev.PhaseChanged) and self.tty and e.total:
            self._live(e.phase if " MB at " in e.phase else f"{e.phase}: {e.done}/{e.total}")  # downloads say MB and rate
        elif isinstance(e, ev.RunFinished | ev.RunCancelled):
            self._line(_summary_line(e.summary))

    def finish(self) -> None:
        with self.lock:
            if self.live:
                self.stream.write("\n")
                self.live = False
            self.stream.flush()


def _summary_line(s: dict[str, Any]) -> str:
    from rlhf_tui.monitoring import duration

    ev_ = s.get("final_eval") or {}
    extra = "".join(f"  {k} {_f(v)}" for k, v in ev_.items() if k in ("eval/task_score", "eval/rewards/accuracies", "eval/accuracy", "eval/reward", "eval/loss"))
    return f"{s.get('status')}: {s.get('steps')} steps in {duration(s.get('elapsed_s', 0))}{extra} -> {s.get('run_dir')}"


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    try:
        return f"{float(v):.{digits}f}" if digits else f"{float(v):,.0f}"
    except (TypeError, ValueError):
        return str(v)


# ------------------------------------------------------------------ other commands


def _cmd_presets() -> int:
    from engine.presets import list_presets

    rows = list_presets()
    width = max(len(r.name) for r in rows)
    for r in rows:
        kind = "built-in" if r.builtin else "user"
        if r.error:
            print(f"{r.name:<{width}}  {kind:<8}  BROKEN: {r.error}")
        else:
            print(f"{r.name:<{width}}  {kind:<8}  {r.algorithm:<6}  {r.model}  {r.description}")
    return 0


def _cmd_app(args: argparse.Namespace) -> int:
    from engine.presets import DEFAULT_PRESET, load_preset

    preset = args.preset or DEFAULT_PRESET
    load_preset(preset, args.overrides)  # bad input fails here with one line, before the UI
    from rlhf_tui.app import run_app
    from rlhf_tui.keymap import load_keymap

    load_keymap()  # a bad keymap.toml too

    return run_app(preset=preset, start=args.start, overrides=args.overrides, runs_root=args.runs_root)


def _cmd_chat(args: argparse.Namespace) -> int:
    from engine.api import adapter_path, run_config
    from engine.errors import ConfigError

    run_config(args.run_dir)  # bad input fails here with one line, before the UI
    adapter_path(args.run_dir, args.step)
    if args.max_tokens < 1 or not 0 <= args.temp <= 10:
        raise ConfigError(f"--max-tokens {args.max_tokens} / --temp {args.temp}: expected max-tokens >= 1 and 0 <= temp <= 10")
    from rlhf_tui.app import make_app
    from rlhf_tui.screens.chat import ChatScreen

    app = make_app(initial_screen=ChatScreen(args.run_dir, args.step, max_tokens=args.max_tokens, temperature=args.temp))
    return int(app.run() or 0)


def _cmd_fuse(args: argparse.Namespace) -> int:
    from engine.fuse import fuse_run

    def progress(phase: str, done: int, total: int) -> None:
        print(f"[{done}/{total}] {phase}", file=sys.stderr, flush=True)

    out = fuse_run(args.run_dir, args.out, step=args.step, dequantize=args.dequantize, progress=progress)
    print(f"wrote {out}: load it with mlx_lm.load({str(out)!r}) or: mlx_lm.generate --model {out} --prompt ...")
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from engine.rundir import RunDirectory

    RunDirectory.at(args.run_dir, must_exist=True)
    from rlhf_tui.app import run_monitor

    return run_monitor(args.run_dir)


if __name__ == "__main__":
    raise SystemExit(main())
