#!/usr/bin/env python3
"""Soak test of `edge-kd serve`: a synthetic camera (one image, delivered as fast as the
queue takes it) → one worker → JSONL sink, for MINUTES, sampling RSS and the daemon's
/metrics every 10 s. Then SIGTERM, and checks that nothing was lost: the daemon's own
account at exit (every decided or failed frame written to the JSONL file, rotation on),
no drops, exit code 0.

Before the soak it runs `edge-kd bench` on the same model, engine and threads, so the
daemon's sustained frames/s can be held against the engine alone.

    cargo build --release
    python3 benches/soak.py --minutes 10                                # default student
    python3 benches/soak.py --minutes 10 --model benches/models/mobilenet_v2-224.onnx \\
        --image benches/frames/camera-640x480.jpg

Writes benches/results/<UTC date>-soak/<name>.json and prints a Markdown row. Stdlib only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def histogram_quantile(m: dict[str, float], source: str, q: float) -> float:
    """Upper bound (seconds) of the bucket holding quantile q: what Prometheus would say."""
    prefix = f'edge_kd_frame_latency_seconds_bucket{{source="{source}",le="'
    buckets = sorted(
        (float("inf") if k[len(prefix) : -2] == "+Inf" else float(k[len(prefix) : -2]), v)
        for k, v in m.items()
        if k.startswith(prefix)
    )
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


def percentile(values: list[int], q: float) -> float:
    values = sorted(values)
    return float(values[min(len(values) - 1, int(q * len(values)))]) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(ROOT / "target/release/edge-kd"))
    ap.add_argument("--model", help="ONNX student (default: the embedded default student)")
    ap.add_argument("--image", default=str(ROOT / "models/samples/0000-ankle-boot.png"))
    ap.add_argument("--engine", default="tract")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", help="result JSON [benches/results/<date>-soak/<name>.json]")
    args = ap.parse_args()

    name = Path(args.model).stem if args.model else "default-student"
    model_args = ["--model", args.model] if args.model else []
    bench = subprocess.run(
        [
            args.binary,
            "bench",
            *model_args,
            "--engine",
            args.engine,
            "--threads",
            str(args.threads),
            "--input",
            args.image,
            "--iters",
            "300",
            "--warmup",
            "30",
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    bench_row = json.loads(bench.stdout)["rows"][0]

    work = Path(tempfile.mkdtemp(prefix="edge-kd-soak-"))
    port = free_port()
    results = work / "results.jsonl"
    model_line = f'model = "{Path(args.model).resolve()}"\n' if args.model else ""
    config = work / "serve.toml"
    config.write_text(
        f'[box]\nid = "soak"\nstate_dir = "{work / "state"}"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
        f'[[source]]\nname = "soak"\n{model_line}engine = "{args.engine}"\nthreads = {args.threads}\n'
        f'synthetic = {{ image = "{Path(args.image).resolve()}", fps = 0 }}\n'
        f'[sinks.jsonl]\npath = "{results}"\nfsync = "interval"\nrotate_bytes = 67108864\nkeep = 2\n'
    )
    env = dict(os.environ, RUST_LOG="info")
    daemon = subprocess.Popen(
        [args.binary, "serve", "--config", str(config)], env=env, stderr=open(work / "daemon.log", "w")
    )
    for _ in range(200):
        try:
            metrics(port)
            break
        except OSError:
            time.sleep(0.05)
    start = time.monotonic()
    samples = []
    deadline = start + args.minutes * 60
    while True:
        now = time.monotonic()
        m = metrics(port)
        samples.append(
            {
                "t_s": round(now - start, 1),
                "rss_mib": round(rss_mib(daemon.pid), 2),
                "frames": m['edge_kd_frames_total{source="soak"}'],
                "dropped": m['edge_kd_dropped_total{source="soak"}'],
                "errors": m['edge_kd_errors_total{source="soak"}'],
                "jsonl_lines": m["edge_kd_jsonl_lines_total"],
            }
        )
        print(f"soak: {samples[-1]}", file=sys.stderr)
        if now >= deadline:
            break
        time.sleep(min(10.0, max(0.0, deadline - now)))
    final_metrics = metrics(port)
    elapsed = time.monotonic() - start
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(timeout=60)

    # "stopped cleanly: D frames decided, F failed, X dropped; J results written to JSONL, ..."
    final = re.search(
        r"stopped cleanly: (\d+) frames decided, (\d+) failed, (\d+) dropped; (\d+) results written",
        (work / "daemon.log").read_text(),
    )
    if not final:
        print(f"soak: the daemon did not stop cleanly; see {work / 'daemon.log'}", file=sys.stderr)
        return 1
    decided, failed, dropped, written = (int(g) for g in final.groups())
    lines_in_file = results.read_text().splitlines()
    latencies = [json.loads(line)["latency_us"] for line in lines_in_file if '"latency_us"' in line]
    after_warmup = [s["rss_mib"] for s in samples if s["t_s"] >= 60] or [s["rss_mib"] for s in samples]
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([sys.argv[0], *sys.argv[1:]]),
        "machine": {
            "cpu": bench.stdout and json.loads(bench.stdout)["machine"]["cpu"],
            "logical_cpus": os.cpu_count(),
            "arch": platform.machine(),
        },
        "model": name,
        "engine": args.engine,
        "threads": args.threads,
        "image": args.image,
        "minutes": round(elapsed / 60, 2),
        "frames_per_s": round(final_metrics['edge_kd_frames_total{source="soak"}'] / elapsed, 1),
        "bench_engine_only_fps": round(bench_row["engine_only"]["throughput_fps"], 1),
        "bench_pipeline_fps": round(bench_row["pipeline"]["throughput_fps"], 1),
        "latency_us_p50": percentile(latencies, 0.50),
        "latency_us_p99": percentile(latencies, 0.99),
        "latency_sample": f"last {len(latencies)} results (the current JSONL file)",
        "end_to_end_p50_s_bucket": histogram_quantile(final_metrics, "soak", 0.50),
        "end_to_end_p99_s_bucket": histogram_quantile(final_metrics, "soak", 0.99),
        "dropped": dropped,
        "errors": failed,
        "decided_at_exit": decided,
        "jsonl_lines_at_exit": written,
        "lost": decided + failed - written,
        "exit_code": code,
        "rss_mib_after_1min_min": min(after_warmup),
        "rss_mib_after_1min_max": max(after_warmup),
        "samples": samples,
    }
    report["ratio_to_engine_only"] = round(report["frames_per_s"] / report["bench_engine_only_fps"], 3)
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    out = Path(args.out) if args.out else ROOT / "benches/results" / f"{day}-soak" / f"{name}-{args.engine}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"| {name} | {args.engine} ×{args.threads} | {report['minutes']} | {report['frames_per_s']} | "
        f"{report['bench_engine_only_fps']} ({report['ratio_to_engine_only']:.2f}×) | "
        f"{report['latency_us_p50']:.0f} / {report['latency_us_p99']:.0f} | "
        f"≤{report['end_to_end_p50_s_bucket'] * 1e3:g} / ≤{report['end_to_end_p99_s_bucket'] * 1e3:g} ms | "
        f"{report['dropped']:.0f} | {report['lost']:.0f} | "
        f"{report['rss_mib_after_1min_min']:.1f}–{report['rss_mib_after_1min_max']:.1f} |"
    )
    print(f"soak: wrote {out}", file=sys.stderr)
    return 0 if code == 0 and report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
