#!/usr/bin/env python3
"""Render edge-kd bench JSON and onnxruntime-python reference JSON as one Markdown summary.

    python benches/report.py benches/results/2026-11-27-myhost [--out summary.md]
    python benches/report.py A.edge-kd.json A.ort-python.json B.edge-kd.json ...

Inputs are result folders or files. Files are paired by name:
``<model>.edge-kd.json`` (the output of ``edge-kd bench --json``) and
``<model>.ort-python.json`` (the output of ``benches/ort_reference.py --json``).
Either half may be missing (a model whose edge-kd run failed still shows its reference).
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EDGE_SUFFIX = ".edge-kd.json"
REF_SUFFIX = ".ort-python.json"
DASH = "—"


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return DASH
    return f"{v:,.{digits}f}"


def collect(paths: list[Path]) -> dict[str, dict]:
    """{model stem: {"edge": report|None, "ref": report|None}} in first-seen order."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.name.endswith((EDGE_SUFFIX, REF_SUFFIX)))
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"report.py: {p}: no such file or folder")
    models: dict[str, dict] = {}
    for f in files:
        if f.name.endswith(EDGE_SUFFIX):
            stem, kind = f.name[: -len(EDGE_SUFFIX)], "edge"
        elif f.name.endswith(REF_SUFFIX):
            stem, kind = f.name[: -len(REF_SUFFIX)], "ref"
        else:
            raise SystemExit(f"report.py: {f}: name must end in {EDGE_SUFFIX} or {REF_SUFFIX}")
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"report.py: {f}: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise SystemExit(f"report.py: {f}: not a bench report (no 'rows' list)")
        models.setdefault(stem, {"edge": None, "ref": None, "files": []})
        models[stem][kind] = data
        models[stem]["files"].append(f.name)
    return models


def ref_p50(ref: dict | None, threads: int):
    if not ref:
        return None
    for r in ref["rows"]:
        if r.get("threads") == threads and r.get("engine_only"):
            return r["engine_only"]["p50_us"]
    return None


def overhead(row: dict) -> str:
    us, pct = row.get("overhead_p50_us"), row.get("overhead_pct")
    if us is None:
        return DASH
    return f"{us:,.1f} µs ({pct:.1f} %)" if pct is not None else f"{us:,.1f} µs"


def model_table(stem: str, edge: dict | None, ref: dict | None) -> list[str]:
    out = [f"## {stem}", ""]
    if edge:
        out.append(
            f"edge-kd {edge.get('edge_kd_version', '?')}; model `{edge.get('model', '?')}`, input "
            f"{edge.get('input_shape')}; frame: {edge.get('frame', '?')}; {edge.get('iters')} iters after "
            f"{edge.get('warmup')} warm-up; {edge.get('date', '')}"
        )
    else:
        out.append("edge-kd: no result (run failed or was skipped; see the run's log).")
    if ref:
        out.append(
            f"onnxruntime-python {ref.get('onnxruntime_version', '?')}: `{ref.get('model', '?')}`, "
            f"{ref.get('iters')} iters after {ref.get('warmup')} warm-up"
        )
    out += [
        "",
        "| engine | threads | stage | p50 µs | p90 µs | p99 µs | frames/s | edge-kd overhead p50 "
        "| ÷ ort-python p50 | peak RSS MiB | load ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (edge or {}).get("rows", []):
        eng, t = r.get("engine", "?"), r.get("threads")
        if r.get("error"):
            err = str(r["error"]).replace("|", "\\|").replace("\n", " ")
            out.append(f"| {eng} | {t} | **error**: {err} | | | | | | | | |")
            continue
        rss, load = fmt(r.get("peak_rss_mib")), fmt(r.get("load_ms"))
        eo, pl = r.get("engine_only"), r.get("pipeline")
        if eo:
            ratio = DASH
            base = ref_p50(ref, t) if eng == "ort" else None
            if base:
                ratio = f"{eo['p50_us'] / base:.2f}×"
            out.append(
                f"| {eng} | {t} | engine | {fmt(eo['p50_us'])} | {fmt(eo['p90_us'])} | {fmt(eo['p99_us'])} "
                f"| {fmt(eo.get('throughput_fps'), 0)} | | {ratio} | {rss} | {load} |"
            )
        if pl:
            out.append(
                f"| {eng} | {t} | pipeline | {fmt(pl['p50_us'])} | {fmt(pl['p90_us'])} | {fmt(pl['p99_us'])} "
                f"| {fmt(pl.get('throughput_fps'), 0)} | {overhead(r)} | | {rss if not eo else ''} | |"
            )
    for r in (ref or {}).get("rows", []):
        eo = r.get("engine_only")
        if not eo:
            continue
        out.append(
            f"| onnxruntime-python | {r.get('threads')} | engine | {fmt(eo['p50_us'])} | {fmt(eo['p90_us'])} "
            f"| {fmt(eo['p99_us'])} | {fmt(eo.get('throughput_fps'), 0)} | | 1.00× | | {fmt(r.get('load_ms'))} |"
        )
    out.append("")
    return out


def overview(models: dict[str, dict]) -> list[str]:
    """One line per model: engine-only p50 µs per engine × threads."""
    cols: list[tuple[str, int]] = []
    for m in models.values():
        for r in (m["edge"] or {}).get("rows", []):
            key = (r.get("engine", "?"), r.get("threads"))
            if key not in cols:
                cols.append(key)
        for r in (m["ref"] or {}).get("rows", []):
            key = ("onnxruntime-python", r.get("threads"))
            if key not in cols:
                cols.append(key)
    if not cols:
        return []
    order = {"tract": 0, "ort": 1, "onnxruntime-python": 2}
    cols.sort(key=lambda c: (order.get(c[0], 9), str(c[0]), c[1] if isinstance(c[1], int) else 0))
    out = [
        "## Overview: engine-only p50 µs (lower is better)",
        "",
        "| model | " + " | ".join(f"{e} ×{t}" for e, t in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for stem, m in models.items():
        cells = {}
        for r in (m["edge"] or {}).get("rows", []):
            eo = r.get("engine_only")
            cells[(r.get("engine"), r.get("threads"))] = "error" if r.get("error") else fmt(eo and eo["p50_us"])
        for r in (m["ref"] or {}).get("rows", []):
            eo = r.get("engine_only")
            cells[("onnxruntime-python", r.get("threads"))] = fmt(eo and eo["p50_us"])
        out.append(f"| {stem} | " + " | ".join(cells.get(c, DASH) for c in cols) + " |")
    out.append("")
    return out


def render(models: dict[str, dict]) -> str:
    out = ["# edge-kd benchmark summary", ""]
    edge = next((m["edge"] for m in models.values() if m["edge"]), None)
    ref = next((m["ref"] for m in models.values() if m["ref"]), None)
    if edge:
        mc = edge.get("machine", {})
        mem = mc.get("memory_mib")
        out.append(
            f"Machine: {mc.get('cpu', '?')} ({mc.get('os', '?')} {mc.get('arch', '?')}, "
            f"{mc.get('logical_cpus', '?')} logical CPUs{f', {mem} MiB' if mem else ''}); "
            f"edge-kd {edge.get('edge_kd_version', '?')}; {edge.get('date', '')}"
        )
    if ref:
        out.append(
            f"Reference: onnxruntime {ref.get('onnxruntime_version', '?')} Python session on host "
            f"`{ref.get('host', '?')}` (CPUExecutionProvider, ORT_ENABLE_ALL, inter_op 1)"
        )
    out += [
        "",
        "- **engine**: the engine alone on a ready input tensor. **pipeline**: preprocess + engine + "
        "decide from an already decoded frame. Latencies are per frame, one stream; "
        "frames/s = 1 / mean latency.",
        "- **edge-kd overhead p50**: median preprocess + decide time per frame in the pipeline loop, "
        "and its share of the engine's median in that same loop.",
        "- **÷ ort-python p50**: edge-kd's `ort` engine-only p50 divided by the p50 of onnxruntime's "
        "own Python session (same model, same thread count, same ORT library when run by "
        "`benches/run.sh`). 1.00× = no cost from edge-kd's binding; > 1 = edge-kd slower.",
        "- MobileNet rows use **random-init weights** (latency only; their outputs mean nothing).",
        "",
    ]
    out += overview(models)
    for stem, m in models.items():
        out += model_table(stem, m["edge"], m["ref"])
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", type=Path, help="result folders and/or JSON files")
    ap.add_argument("--out", type=Path, help="write the Markdown here (default: stdout)")
    args = ap.parse_args()
    models = collect(args.inputs)
    if not models:
        raise SystemExit(f"report.py: no *{EDGE_SUFFIX} or *{REF_SUFFIX} files in {', '.join(map(str, args.inputs))}")
    text = render(models)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
