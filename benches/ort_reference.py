#!/usr/bin/env python3
"""Reference latency of a model in onnxruntime's own Python session (engine only).

    .venv/bin/python benches/ort_reference.py --model M.onnx --threads 1,2 \
        --iters 300 --warmup 30 --json OUT.json

For each thread count: one InferenceSession (CPUExecutionProvider, ORT_ENABLE_ALL,
intra_op_num_threads=t, inter_op_num_threads=1, sequential execution), a fixed random
float32 tensor of the model's input shape (seed 0; dynamic dims become 1), `warmup` untimed
runs, then `iters` runs each timed with time.perf_counter_ns around session.run. No
preprocessing: this is the number to compare with the `engine_only` column of
`edge-kd bench --engine ort`. Markdown table on stdout, JSON to --json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def parse_threads(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads: {s!r} is not a comma-separated list of integers") from None
    if not out or any(t < 1 for t in out):
        raise argparse.ArgumentTypeError(f"--threads: {s!r}: need one or more integers >= 1")
    return out


def positive(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s}: must be >= 1")
    return v


def non_negative(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s}: must be >= 0")
    return v


def stats_us(ns: np.ndarray) -> dict:
    """The same statistics, computed the same way, as `edge-kd bench` (src/bench.rs Stats).

    Percentile q is the sorted sample at index round((n - 1) * q) (half away from zero):
    a reported value is one that was measured, and both tools pick the same one.
    """
    us = np.sort(ns.astype(np.float64) / 1e3)
    n = len(us)

    def at(q: float) -> float:
        return float(us[int(math.floor((n - 1) * q + 0.5))])

    mean = float(us.mean())
    return {
        "p50_us": at(0.50),
        "p90_us": at(0.90),
        "p99_us": at(0.99),
        "max_us": float(us[-1]),
        "mean_us": mean,
        "throughput_fps": 1e6 / mean if mean > 0 else 0.0,
    }


def make_feeds(sess: ort.InferenceSession, rng: np.random.Generator) -> tuple[dict, dict]:
    feeds, shapes = {}, {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = NP_TYPES.get(inp.type)
        if dtype is None:
            raise SystemExit(f"input {inp.name!r}: unsupported type {inp.type}")
        if np.issubdtype(dtype, np.floating):
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            arr = np.ones(shape, dtype=dtype)
        else:
            arr = np.zeros(shape, dtype=dtype)
        feeds[inp.name] = arr
        shapes[inp.name] = shape
    return feeds, shapes


def bench(model: str, threads: int, iters: int, warmup: int) -> dict:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter_ns()
    sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    feeds, shapes = make_feeds(sess, np.random.default_rng(0))
    outs = [o.name for o in sess.get_outputs()]
    for _ in range(warmup):
        sess.run(outs, feeds)
    ns = np.empty(iters, dtype=np.int64)
    for i in range(iters):
        t = time.perf_counter_ns()
        sess.run(outs, feeds)
        ns[i] = time.perf_counter_ns() - t
    return {"threads": threads, "load_ms": load_ms, "input_shapes": shapes, "engine_only": stats_us(ns)}


def peak_rss_mib() -> float | None:
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return kb / 1024.0
    except Exception:
        return None


def markdown(res: dict) -> str:
    lines = [
        f"### onnxruntime-python reference: `{Path(res['model']).name}`",
        "",
        f"onnxruntime {res['onnxruntime_version']} (Python {res['python_version']}), "
        f"CPUExecutionProvider, ORT_ENABLE_ALL, inter_op=1; {res['iters']} iters after "
        f"{res['warmup']} warm-up; host {res['host']} ({res['logical_cpus']} logical CPUs)",
        "",
        "| threads | p50 µs | p90 µs | p99 µs | max µs | mean µs | frames/s | load ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        s = r["engine_only"]
        lines.append(
            f"| {r['threads']} | {s['p50_us']:.1f} | {s['p90_us']:.1f} | {s['p99_us']:.1f} | "
            f"{s['max_us']:.1f} | {s['mean_us']:.1f} | {s['throughput_fps']:.1f} | {r['load_ms']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="ONNX model file")
    ap.add_argument("--threads", type=parse_threads, default=[1, 2], help="e.g. 1,2 (default 1,2)")
    ap.add_argument("--iters", type=positive, default=300)
    ap.add_argument("--warmup", type=non_negative, default=30)
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    if not Path(args.model).is_file():
        ap.error(f"--model {args.model}: no such file")

    res = {
        "tool": "benches/ort_reference.py",
        "onnxruntime_version": ort.__version__,
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "host": socket.gethostname(),
        "machine": {"arch": platform.machine(), "os": platform.system().lower(), "logical_cpus": os.cpu_count()},
        "logical_cpus": os.cpu_count(),
        "model": str(args.model),
        "iters": args.iters,
        "warmup": args.warmup,
        "session": {
            "provider": "CPUExecutionProvider",
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL",
        },
        "rows": [],
    }
    for t in args.threads:
        res["rows"].append(bench(args.model, t, args.iters, args.warmup))
        print(f"  threads={t}: p50 {res['rows'][-1]['engine_only']['p50_us']:.1f} µs", file=sys.stderr)
    res["peak_rss_mib"] = peak_rss_mib()
    print(markdown(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
