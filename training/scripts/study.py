"""Runs the method comparison of docs/RESULTS.md through `edge-kd distill` and tabulates it.

    python training/scripts/study.py run --out runs/study --epochs 20 100 --seeds 0 1 2
    python training/scripts/study.py report runs/study
    python training/scripts/study.py run --study inspection --out runs/inspection --epochs 40 \
        --set data.path=data/inspection/train/manifest.csv --set data.test_path=data/inspection/test/manifest.csv

`run` trains the teacher once (in the first KD run) and hands its weights to every other run,
so all students learn from the same teacher; `--teacher-weights` reuses one trained before.
Each run is one `edge-kd distill` into OUT/<student>-<method>-e<epochs>-s<seed>/ with its log
beside it; a run whose summary.json exists is skipped and one with checkpoints but no summary
is resumed, so an interrupted study continues where it stopped. `--deadline S` bounds the wall
time (a GPU lease, a CI slot): after S seconds no run starts and running ones are interrupted,
which checkpoints them. `report` prints one markdown row per student and method: test accuracy
as mean ± sample std over seeds (n), and the calibrated ECE, the accept coverage at the card's
error target and the training img/s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
INTERRUPTED = 130  # edge-kd distill's exit code after Ctrl-C / SIGINT

# Method name in the table -> (base config, extra --set overrides), per study.
FASHION: dict[str, tuple[str, list[str]]] = {
    "scratch": ("fashion-scratch.toml", []),
    "kd": ("fashion-kd.toml", []),
    "crld": ("fashion-crld.toml", []),
    "dtokd": ("fashion-dtokd.toml", []),
    "dtokd+crld": ("fashion-dtokd.toml", ["distill.views=crld"]),
}
# The synthetic inspection set (issue 14): the camera-only student by every method, and the
# missing-modality student; the base config follows the student (INSPECTION_CONFIGS).
INSPECTION: dict[str, tuple[str, list[str]]] = {
    m: ("", [f"distill.method={m}"]) for m in ("scratch", "kd", "edam", "crd", "edam+crd")
}
INSPECTION_CONFIGS = {"vit-rgb-student": "inspection-camera.toml", "mm-vit-missing-student": "inspection-missing.toml"}
STUDIES = {
    "fashion": {"methods": FASHION, "students": ["cnn-18k", "cnn-70k"], "teacher": "wrn16-4", "data": "fashion"},
    "inspection": {
        "methods": INSPECTION,
        "students": list(INSPECTION_CONFIGS),
        "teacher": "mm-vit-teacher",
        "data": "inspection",
    },
}
METHODS = {**FASHION, **INSPECTION}


@dataclass(frozen=True)
class Job:
    student: str
    method: str
    epochs: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.student}-{self.method}-e{self.epochs}-s{self.seed}"

    @property
    def needs_teacher(self) -> bool:
        return self.method != "scratch"


def say(msg: str, stream=None) -> None:
    # One write per line: runs report from several threads at once.
    stream = stream or sys.stdout
    stream.write(msg + "\n")
    stream.flush()


def find_edge_kd() -> str:
    root = Path(__file__).resolve().parents[2]
    for p in (root / "target/release/edge-kd", root / "target/debug/edge-kd"):
        if p.is_file():
            return str(p)
    return shutil.which("edge-kd") or "edge-kd"


class Deadline:
    """Stops the study at a wall-clock limit: no run starts after it, and the running
    `edge-kd distill` processes get SIGINT (they save a checkpoint and exit 130)."""

    def __init__(self, seconds: float | None):
        self.at = None if seconds is None else time.monotonic() + seconds
        self.passed = threading.Event()
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        if self.at is not None:
            threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        time.sleep(max(0.0, self.at - time.monotonic()))
        with self._lock:
            self.passed.set()
            for proc in self._running:
                proc.send_signal(signal.SIGINT)

    def start(self, cmd: list[str], log) -> subprocess.Popen | None:
        """Popen ``cmd`` unless the deadline has passed (then None)."""
        with self._lock:
            if self.passed.is_set():
                return None
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            self._running.add(proc)
            return proc

    def finished(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)


class Stopped(Exception):
    """A run the deadline kept from starting or interrupted: not a failure, the next `run` resumes it."""


def distill(args, job: Job, teacher: Path | None, out: Path, deadline: Deadline) -> dict:
    study = STUDIES[args.study]
    base, extra = study["methods"][job.method]
    if args.study == "inspection":
        base = INSPECTION_CONFIGS[job.student]
    sets = [
        f"student.model={job.student}",
        f"student.epochs={job.epochs}",
        f"run.seed={job.seed}",
        f"export.name={study['data']}-{job.student}-{job.method}-e{job.epochs}-s{job.seed}",
        *extra,
        *args.set,
    ]
    if job.needs_teacher:
        sets.append(f"teacher.model={args.teacher}")
        sets.append(f"teacher.epochs={args.teacher_epochs}" if teacher is None else f"teacher.weights={teacher}")
    if args.threads:
        sets.append(f"run.threads={args.threads}")
    cmd = [args.edge_kd, "distill", "--config", str(CONFIGS / base), "--out", str(out), "--device", args.device]
    if (out / "checkpoints").is_dir():
        cmd.append("--resume")
    for s in sets:
        cmd += ["--set", s]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "study.log", "a", encoding="utf-8") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        try:
            proc = deadline.start(cmd, log)
        except OSError as e:
            raise RuntimeError(f"{job.name}: cannot start {args.edge_kd}: {e.strerror or e}") from None
        if proc is None:
            raise Stopped(f"{job.name}: not started (deadline)")
        say(f"study: start {job.name}" + (" (resumed)" if "--resume" in cmd else ""))
        rc = proc.wait()
        deadline.finished(proc)
    summary = out / "summary.json"
    if rc == INTERRUPTED and deadline.passed.is_set():
        raise Stopped(f"{job.name}: interrupted at the deadline (checkpointed)")
    if rc != 0 or not summary.is_file():
        raise RuntimeError(f"{job.name} failed (exit {rc}); see {out / 'study.log'}")
    s = json.loads(summary.read_text(encoding="utf-8"))
    say(f"study: done  {job.name}: test accuracy {s['student']['test_accuracy']:.4f}")
    return s


def run(args) -> int:
    out = Path(args.out)
    jobs = [Job(st, m, e, sd) for e in args.epochs for st in args.students for m in args.methods for sd in args.seeds]
    teacher_ready = threading.Event()
    if args.teacher_weights:
        first, teacher_pt = None, Path(args.teacher_weights).resolve()
        if not teacher_pt.is_file():
            say(f"study: --teacher-weights {teacher_pt}: no such file", sys.stderr)
            return 2
        teacher_ready.set()
    else:
        # The first KD-family run trains the teacher; it goes first, the scratch runs beside it.
        first = next((j for j in jobs if j.needs_teacher), None)
        if first is not None:
            jobs.remove(first)
            jobs.sort(key=lambda j: j.needs_teacher)
            jobs.insert(0, first)
        teacher_pt = out / first.name / "teacher.pt" if first else None
    failures: list[str] = []
    stopped: list[str] = []
    deadline = Deadline(args.deadline)

    def work(job: Job) -> None:
        run_dir = out / job.name
        try:
            if (run_dir / "summary.json").is_file():
                say(f"study: skip  {job.name} (summary.json exists)")
            elif job is first:
                distill(args, job, None, run_dir, deadline)
            else:
                if job.needs_teacher:
                    teacher_ready.wait()
                    if not teacher_pt.is_file():
                        if deadline.passed.is_set():
                            raise Stopped(f"{job.name}: not started (deadline; no teacher yet)")
                        raise RuntimeError(f"{job.name} skipped: the teacher run {first.name} failed")
                distill(args, job, teacher_pt if job.needs_teacher else None, run_dir, deadline)
        except Stopped as e:
            stopped.append(str(e))
        except RuntimeError as e:
            failures.append(str(e))
            say(f"study: {e}", sys.stderr)
        finally:
            if job is first:
                teacher_ready.set()

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(work, jobs))
    print(report(out), end="")
    if stopped:
        say(
            f"study: deadline reached: {len(stopped)} run(s) not finished; `run` again with the same "
            "arguments continues them:\n  " + "\n  ".join(sorted(stopped)),
            sys.stderr,
        )
    if failures:
        print(f"study: {len(failures)} run(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "–"
    m = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{m:.{digits}f} (n=1)"
    return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f} (n={len(values)})"


def collect(out: Path) -> dict[tuple[str, str, int], list[dict]]:
    """summary.json of every finished run, grouped by (student, method, epochs)."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for summary in sorted(out.glob("*/summary.json")):
        student, method, epochs, _seed = summary.parent.name.rsplit("-", 3)
        key = (student, method, int(epochs.removeprefix("e")))
        groups.setdefault(key, []).append(json.loads(summary.read_text(encoding="utf-8")))
    return groups


def _subset_acc(summary: dict, role: str, subset: str, label: str | None = None) -> float | None:
    by = (summary.get(role) or {}).get("by_subset") or {}
    entry = by.get(subset)
    if entry is None:
        return None
    return entry["accuracy"] if label is None else entry["per_class"].get(label)


def inspection_report(groups: dict[tuple[str, str, int], list[dict]]) -> str:
    """The table of the inspection study: every accuracy with both inputs and with the height
    map missing, the per-class accuracy of dents and stains, coverage per subset and parameters."""
    lines = []
    teachers: dict[str, list[dict]] = {}
    for runs in groups.values():
        for s in runs:
            if s.get("teacher"):
                teachers.setdefault(s["teacher"]["model"], [])
                if s["teacher"] not in teachers[s["teacher"]["model"]]:
                    teachers[s["teacher"]["model"]].append(s["teacher"])

    def cells(summaries: list[dict], role: str) -> list[str]:
        def col(subset, label=None):
            vals = [_subset_acc(s, role, subset, label) for s in summaries]
            return _mean_sd([v for v in vals if v is not None], 100)

        return [col("rgb+height"), col("rgb"), col("rgb+height", "dent"), col("rgb", "dent"), col("rgb", "stain")]

    head = (
        "| model | method | epochs | acc rgb+height % | acc rgb only % | dent, rgb+height % | dent, rgb % "
        "| stain, rgb % |"
    )
    lines += [head, "|---|---|---|---|---|---|---|---|"]
    for model, ts in sorted(teachers.items()):
        wrapped = [{"teacher": t} for t in ts]
        lines.append(f"| {model} (teacher) | – | – | " + " | ".join(cells(wrapped, "teacher")) + " |")
    order = list(INSPECTION)
    for key in sorted(groups, key=lambda k: (k[0], k[2], order.index(k[1]) if k[1] in order else len(order))):
        student, method, epochs = key
        lines.append(f"| {student} | {method} | {epochs} | " + " | ".join(cells(groups[key], "student")) + " |")
    lines += [
        "",
        "| model | method | epochs | params | coverage @ target, all inputs % | coverage, rgb only % | ECE after T |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for key in sorted(groups, key=lambda k: (k[0], k[2], order.index(k[1]) if k[1] in order else len(order))):
        runs = groups[key]
        student, method, epochs = key
        cov = [s["coverage"] for s in runs if s.get("coverage") is not None]
        sub = [x["coverage"] for s in runs for x in s.get("subsets", []) if x["present"] == ["rgb"]]
        sub = [c for c in sub if c is not None]
        lines.append(
            f"| {student} | {method} | {epochs} | {runs[0]['student']['params']} | {_mean_sd(cov, 100, 1)} | "
            f"{_mean_sd(sub, 100, 1) if sub else '–'} | {_mean_sd([s['ece_after'] for s in runs], 1, 4)} |"
        )
    return "\n".join(lines) + "\n"


def report(out: Path) -> str:
    groups = collect(out)
    if not groups:
        return f"no finished runs (no */summary.json) in {out}\n"
    if any(s["student"].get("by_subset") and "rgb" in s["student"]["by_subset"] for r in groups.values() for s in r):
        return inspection_report(groups)
    lines = []
    teachers = {
        (s["teacher"]["model"], round(s["teacher"]["test_accuracy"], 4))
        for runs in groups.values()
        for s in runs
        if s.get("teacher")
    }
    for model, acc in sorted(teachers):
        lines.append(f"Teacher {model}: test accuracy {acc * 100:.2f} %.")
    lines.append("")
    lines.append("| student | method | epochs | test accuracy % | ECE after T | coverage @ target % | train img/s |")
    lines.append("|---|---|---|---|---|---|---|")
    order = list(METHODS)
    for key in sorted(groups, key=lambda k: (k[0], k[2], order.index(k[1]) if k[1] in order else len(order), k[1])):
        runs = groups[key]
        student, method, epochs = key
        acc = [s["student"]["test_accuracy"] for s in runs]
        ece = [s["ece_after"] for s in runs]
        cov = [s["coverage"] for s in runs if s.get("coverage") is not None]
        ips = [s["images_per_s"] for s in runs if s.get("images_per_s")]
        lines.append(
            f"| {student} | {method} | {epochs} | {_mean_sd(acc, 100)} | {_mean_sd(ece, 1, 4)} | "
            f"{_mean_sd(cov, 100, 1)} | {_mean_sd(ips, 1, 0)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the grid of distillations")
    r.add_argument("--out", default="runs/study")
    r.add_argument(
        "--study",
        default="fashion",
        choices=list(STUDIES),
        help="fashion: Fashion-MNIST students; inspection: the synthetic inspection set (its configs' data paths)",
    )
    r.add_argument("--students", nargs="+", help="default: the study's (fashion: cnn-18k cnn-70k)")
    r.add_argument("--methods", nargs="+", choices=list(METHODS), help="default: all of the study's")
    r.add_argument("--epochs", nargs="+", type=int, default=[20])
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--teacher", help="default: the study's (fashion: wrn16-4; inspection: mm-vit-teacher)")
    r.add_argument("--teacher-epochs", type=int, default=20)
    r.add_argument(
        "--teacher-weights",
        metavar="PATH",
        help="a trained teacher (teacher.pt of an earlier run): no teacher is trained",
    )
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--jobs", type=int, default=1, help="runs at once (CPU: one per core with --threads 1)")
    r.add_argument("--threads", type=int, default=0, help="torch threads per run (0: the config's)")
    r.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="stop after this long: start no run, interrupt (checkpoint) the running ones",
    )
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra override for every run (repeatable)",
    )
    r.add_argument("--edge-kd", default=find_edge_kd(), help="the edge-kd binary")
    rep = sub.add_parser("report", help="print the markdown table of a study folder")
    rep.add_argument("out")
    args = p.parse_args(argv)
    if args.command == "report":
        out = Path(args.out)
        if not out.is_dir():
            print(f"study: {out}: no such folder", file=sys.stderr)
            return 2
        print(report(out), end="")
        return 0
    study = STUDIES[args.study]
    args.students = args.students or study["students"]
    args.methods = args.methods or list(study["methods"])
    args.teacher = args.teacher or study["teacher"]
    wrong = [m for m in args.methods if m not in study["methods"]] + [
        s for s in args.students if args.study == "inspection" and s not in INSPECTION_CONFIGS
    ]
    if wrong:
        say(f"study: {', '.join(wrong)}: not part of the {args.study} study", sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
