#!/usr/bin/env python3
"""Peak memory of edge-kd on images built to exhaust it (tests/fixtures/hostile/, made by
tests/fixtures/make_hostile.py): tiny files declaring tens of thousands of pixels a side.

1. `edge-kd run --format jsonl FILE`, once per file: the child's peak RSS (wait4's ru_maxrss)
   and its error line.
2. `edge-kd serve` with an upload source and a watched folder: peak RSS (VmHWM) when idle, then
   after every file was POSTed to /infer and dropped into the folder.

    cargo build --release
    python3 benches/hostile_rss.py [--edge-kd target/release/edge-kd] [--extra-args ...]

Prints a Markdown table (docs/RESULTS.md, "Hostile images"). Stdlib only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "fixtures" / "hostile"


def run_once(binary: str, path: Path, extra: list[str]) -> tuple[float, str]:
    proc = subprocess.Popen(
        [binary, "run", "--format", "jsonl", *extra, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    out = proc.stdout.read().decode()
    _, _, usage = os.wait4(proc.pid, 0)
    line = json.loads(out.splitlines()[0]) if out.strip() else {}
    return usage.ru_maxrss / 1024.0, line.get("error", line.get("label", "?"))


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/infer?source=upload", body)
    status = conn.getresponse().status
    conn.close()
    return status


def serve_growth(binary: str, files: list[Path]) -> tuple[float, float, list[int]]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inbox, results = tmp / "in", tmp / "r.jsonl"
        inbox.mkdir()
        port = free_port()
        config = tmp / "serve.toml"
        config.write_text(
            f'[box]\nstate_dir = "{tmp / "state"}"\n[http]\nlisten = "127.0.0.1:{port}"\n'
            '[[source]]\nname = "upload"\nhttp = {}\n'
            f'[[source]]\nname = "inbox"\nfolder = {{ path = "{inbox}" }}\n'
            f'[sinks.jsonl]\npath = "{results}"\n'
        )
        daemon = subprocess.Popen([binary, "serve", "--config", str(config)], stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            time.sleep(1.0)
            idle = vm_hwm_mib(daemon.pid)
            statuses = [post(port, f.read_bytes()) for f in files]
            for f in files:
                (inbox / f.name).write_bytes(f.read_bytes())
            deadline = time.time() + 30
            while time.time() < deadline:
                if results.exists() and results.read_text().count('"source":"inbox"') >= len(files):
                    break
                time.sleep(0.2)
            after = vm_hwm_mib(daemon.pid)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
        return idle, after, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge-kd", default=str(ROOT / "target" / "release" / "edge-kd"))
    parser.add_argument("--extra-args", nargs=argparse.REMAINDER, default=[], help="more flags for `run`")
    args = parser.parse_args()
    files = sorted(HOSTILE.iterdir())
    print("| file | bytes | `edge-kd run` peak RSS | result |")
    print("|---|---|---|---|")
    for f in files:
        rss, result = run_once(args.edge_kd, f, args.extra_args)
        print(f"| `{f.name}` | {f.stat().st_size:,} | {rss:.1f} MiB | {result} |")
    idle, after, statuses = serve_growth(args.edge_kd, files)
    print()
    print(
        f"`edge-kd serve`: peak RSS {idle:.1f} MiB idle, {after:.1f} MiB after all {len(files)} files "
        f"POSTed (HTTP {sorted(set(statuses))}) and dropped into its folder: +{after - idle:.1f} MiB"
    )


if __name__ == "__main__":
    main()
