"""Command line: ``python -m edgekd_train distill|check|data``.

stdout is reserved for JSON-lines events (events.py); everything human goes to stderr. Exit
codes: 0 done, 2 config/data error, 130 interrupted, 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import traceback
from pathlib import Path
from typing import IO

from .events import Emitter


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse prints usage and exits 2 itself; we need the error event first.
    def error(self, message):
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m edgekd_train", description="edge-kd training side")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("distill", help="teacher -> student -> calibrate -> export")
    d.add_argument("--config", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--device", choices=("auto", "cpu", "cuda"))
    d.add_argument("--resume", action="store_true")
    d.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    sub.add_parser("check", help="print the environment as one JSON line")
    data = sub.add_parser("data", help="generate a data set").add_subparsers(dest="dataset", required=True)
    ins = data.add_parser("inspection", help="the synthetic multimodal inspection set (RGB + 16-bit height)")
    ins.add_argument("--out", required=True, help="folder for rgb/, height/ and manifest.csv")
    ins.add_argument("--n", type=int, required=True, help="number of samples (classes balanced)")
    ins.add_argument("--seed", type=int, default=0)
    ins.add_argument("--size", type=int, default=64, metavar="PX", help="image side in pixels (default 64)")
    ins.add_argument("--force", action="store_true", help="write into a non-empty --out")
    return p


def _check(emit: Emitter) -> int:
    import platform

    try:
        import torch
    except ImportError:
        emit({"event": "check", "python": platform.python_version(), "torch": None, "cuda": False})
        return 0
    emit(
        {
            "event": "check",
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": bool(torch.cuda.is_available()),
        }
    )
    return 0


def _inspection(args: argparse.Namespace, emit: Emitter) -> int:
    # Light imports only: generating data needs numpy and Pillow, not torch.
    from .data.inspection import CLASSES, MIN_SIZE, write_set

    out = Path(args.out)
    problem = None
    if args.n <= 0:
        problem = f"--n must be at least 1 (got {args.n})"
    elif args.size < MIN_SIZE:
        problem = f"--size must be at least {MIN_SIZE} pixels (got {args.size})"
    elif args.seed < 0:
        problem = f"--seed must be 0 or more (got {args.seed})"
    elif out.exists() and not out.is_dir():
        problem = f"--out {out} exists and is not a folder"
    elif out.is_dir() and any(out.iterdir()) and not args.force:
        problem = f"--out {out} is not empty; choose another folder or pass --force to write into it"
    if problem:
        emit({"event": "error", "kind": "config", "message": problem})
        print(f"error: {problem}", file=sys.stderr)
        return 2
    emit(
        {"event": "start", "dataset": "inspection", "out": str(out), "n": args.n, "seed": args.seed, "size": args.size}
    )
    every = max(1, args.n // 20)

    def progress(done: int) -> None:
        if done % every == 0 or done == args.n:
            emit({"event": "progress", "done": done, "of": args.n})

    try:
        counts = write_set(out, args.n, args.seed, args.size, progress)
    except OSError as e:
        emit({"event": "error", "kind": "data", "message": f"cannot write the data set: {e}"})
        print(f"error: cannot write the data set: {e}", file=sys.stderr)
        return 2
    emit(
        {
            "event": "summary",
            "dataset": "inspection",
            "manifest": str(out / "manifest.csv"),
            "n": args.n,
            "classes": list(CLASSES),
            "counts": counts,
            "synthetic": True,
        }
    )
    return 0


def _sigterm(_signum, _frame):
    # Treat SIGTERM like Ctrl-C so a supervisor stopping us still gets a checkpoint.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, events: IO[str] | None = None) -> int:
    emit = Emitter(events or sys.stdout)
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        emit({"event": "error", "kind": "config", "message": f"usage: {e}"})
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cmd == "check":
        return _check(emit)
    if args.cmd == "data":
        try:
            return _inspection(args, emit)
        except KeyboardInterrupt:
            emit({"event": "interrupted", "phase": "data", "checkpoint": None})
            return 130

    # Everything below may import torch; config and data errors must still exit 2 without a traceback.
    from .config import ConfigError, load_config
    from .data.splits import DataError
    from .models.external import ExternalModelError
    from .train import Interrupted

    signal.signal(signal.SIGTERM, _sigterm)
    # A parent (or `cmd &` in a script) may have left SIGINT ignored; Ctrl-C must still checkpoint.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    overrides = list(args.set)
    if args.device:
        overrides.append(f"run.device={json.dumps(args.device)}")
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    try:
        cfg = load_config(args.config, overrides)
        from .pipeline import run_distill

        run_distill(cfg, Path(args.out), args.resume, emit, command)
        return 0
    except ConfigError as e:
        emit({"event": "error", "kind": "config", "message": str(e)})
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, ExternalModelError) as e:
        emit({"event": "error", "kind": "data", "message": str(e)})
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        emit({"event": "interrupted", "phase": e.phase, "checkpoint": e.checkpoint})
        print(f"interrupted during {e.phase}; checkpoint {e.checkpoint}; rerun with --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        emit({"event": "interrupted", "phase": None, "checkpoint": None})
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: the event first, then the traceback
        emit({"event": "error", "kind": "runtime", "message": f"{type(e).__name__}: {e}"})
        traceback.print_exc(file=sys.stderr)
        return 1
    finally:
        emit.close()


def entry() -> int:
    """Process entry: move fd 1 to a private fd for events and point fd 1 at stderr, so stray
    prints (ours, torch's, C libraries') can never corrupt the event stream."""
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    events = os.fdopen(events_fd, "w", encoding="utf-8", buffering=1)
    sys.stdout = sys.stderr
    try:
        return main(None, events)
    finally:
        events.flush()
