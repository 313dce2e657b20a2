"""The study driver (training/scripts/study.py): scheduling of the shared teacher, and the table."""

import json
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def study(scripts):
    return scripts("study")


def write_summary(run_dir: Path, acc: float, ece: float = 0.01, coverage=0.7, teacher=0.93):
    run_dir.mkdir(parents=True)
    s = {
        "student": {"test_accuracy": acc},
        "ece_after": ece,
        "coverage": coverage,
        "images_per_s": 1000.0,
        "teacher": {"model": "wrn16-1", "test_accuracy": teacher} if teacher else None,
    }
    (run_dir / "summary.json").write_text(json.dumps(s))


def test_report_gives_mean_and_sample_sd_per_student_method_and_epochs(study, tmp_path):
    write_summary(tmp_path / "cnn-70k-kd-e20-s0", 0.92, teacher=0.95)
    write_summary(tmp_path / "cnn-70k-kd-e20-s1", 0.93, teacher=0.95)
    write_summary(tmp_path / "cnn-70k-dtokd+crld-e20-s0", 0.94, coverage=None, teacher=0.95)
    write_summary(tmp_path / "cnn-70k-scratch-e20-s0", 0.91, teacher=None)
    table = study.report(tmp_path)
    rows = [line for line in table.splitlines() if line.startswith("| cnn-70k")]
    # Methods in the order of the comparison, not alphabetical.
    assert [r.split("|")[2].strip() for r in rows] == ["scratch", "kd", "dtokd+crld"]
    assert "| 92.50 ± 0.71 (n=2) |" in rows[1]
    assert "| 94.00 (n=1) |" in rows[2] and "| – |" in rows[2]  # no coverage at the target
    assert "Teacher wrn16-1: test accuracy 95.00 %." in table


def test_report_of_an_empty_folder_says_so(study, tmp_path):
    assert "no finished runs" in study.report(tmp_path)


def fake_edge_kd(tmp_path: Path, fail: str | None = None, hang: bool = False) -> Path:
    """Stands in for the edge-kd binary: records its arguments and writes summary.json (and
    teacher.pt when it trained a teacher), so the driver's scheduling can be checked. With
    ``hang`` a run that is not resumed trains until SIGINT, then checkpoints and exits 130 as
    `edge-kd distill` does."""
    script = tmp_path / ("edge-kd-hang" if hang else "edge-kd")
    script.write_text(f"""#!{sys.executable}
import json, signal, sys, time
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)  # as edge-kd distill does
sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
(out / "args.json").write_text(json.dumps(args))
if {fail!r} and {fail!r} in str(out):
    sys.exit(1)
if {hang!r} and "--resume" not in args:
    def interrupted(*_):
        (out / "checkpoints").mkdir()
        sys.exit(130)
    signal.signal(signal.SIGINT, interrupted)
    time.sleep(60)
    sys.exit(1)
if any(s.startswith("teacher.epochs=") for s in sets):
    (out / "teacher.pt").write_bytes(b"weights")
(out / "summary.json").write_text(json.dumps({{"student": {{"test_accuracy": 0.9}}, "ece_after": 0.01,
    "coverage": 0.7, "images_per_s": 1.0, "teacher": None}}))
""")
    script.chmod(0o755)
    return script


def sets_of(run_dir: Path) -> list[str]:
    args = json.loads((run_dir / "args.json").read_text())
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


def run_args(tmp_path, binary, methods=("scratch", "kd", "crld")):
    return [
        "run",
        "--out",
        str(tmp_path / "study"),
        "--students",
        "cnn-18k",
        "--methods",
        *methods,
        "--epochs",
        "2",
        "--seeds",
        "0",
        "1",
        "--teacher",
        "wrn16-1",
        "--teacher-epochs",
        "3",
        "--jobs",
        "2",
        "--edge-kd",
        str(binary),
    ]


def test_run_trains_one_teacher_and_hands_it_to_every_other_distillation(study, tmp_path):
    assert study.main(run_args(tmp_path, fake_edge_kd(tmp_path))) == 0
    runs = {p.name: sets_of(p) for p in (tmp_path / "study").iterdir()}
    assert len(runs) == 6
    trained = [n for n, sets in runs.items() if "teacher.epochs=3" in sets]
    assert trained == ["cnn-18k-kd-e2-s0"]
    teacher = str(tmp_path / "study" / "cnn-18k-kd-e2-s0" / "teacher.pt")
    for name, sets in runs.items():
        if "-scratch-" in name:
            assert not any(s.startswith("teacher.") for s in sets)
        elif name != "cnn-18k-kd-e2-s0":
            assert f"teacher.weights={teacher}" in sets
    assert "run.seed=1" in runs["cnn-18k-crld-e2-s1"]


def test_a_failed_teacher_run_fails_the_study_and_skips_what_needs_it(study, tmp_path, capsys):
    assert study.main(run_args(tmp_path, fake_edge_kd(tmp_path, fail="cnn-18k-kd-e2-s0"))) == 1
    err = capsys.readouterr().err
    assert "cnn-18k-kd-e2-s0 failed (exit 1)" in err
    assert "cnn-18k-crld-e2-s1 skipped: the teacher run cnn-18k-kd-e2-s0 failed" in err
    finished = sorted(p.parent.name for p in (tmp_path / "study").glob("*/summary.json"))
    assert finished == ["cnn-18k-scratch-e2-s0", "cnn-18k-scratch-e2-s1"]


def test_finished_runs_are_skipped_when_a_study_continues(study, tmp_path, capsys):
    binary = fake_edge_kd(tmp_path)
    assert study.main(run_args(tmp_path, binary, methods=("scratch",))) == 0
    capsys.readouterr()
    assert study.main(run_args(tmp_path, binary, methods=("scratch",))) == 0
    assert capsys.readouterr().out.count("(summary.json exists)") == 2


def test_given_teacher_weights_no_teacher_is_trained(study, tmp_path):
    weights = tmp_path / "teacher.pt"
    weights.write_bytes(b"weights")
    args = run_args(tmp_path, fake_edge_kd(tmp_path), methods=("kd",)) + ["--teacher-weights", str(weights)]
    assert study.main(args) == 0
    for run in (tmp_path / "study").iterdir():
        sets = sets_of(run)
        assert f"teacher.weights={weights}" in sets and not any(s.startswith("teacher.epochs=") for s in sets)
    assert study.main(args[:-1] + [str(tmp_path / "absent.pt")]) == 2


def test_a_missing_edge_kd_binary_is_an_error_line_not_a_traceback(study, tmp_path, capsys):
    assert study.main(run_args(tmp_path, tmp_path / "no-such-edge-kd", methods=("scratch",))) == 1
    err = capsys.readouterr().err
    assert f"cannot start {tmp_path / 'no-such-edge-kd'}: No such file or directory" in err


def test_a_deadline_checkpoints_the_running_run_and_the_next_run_resumes_it(study, tmp_path, capsys):
    args = run_args(tmp_path, fake_edge_kd(tmp_path, hang=True), methods=("scratch", "kd")) + ["--jobs", "1"]
    t0 = time.monotonic()
    assert study.main(args + ["--deadline", "1"]) == 0  # stopped by the deadline: not a failure
    assert time.monotonic() - t0 < 30  # the hanging run was interrupted, not waited for
    err = capsys.readouterr().err
    assert "deadline reached: 4 run(s) not finished" in err
    assert "cnn-18k-kd-e2-s0: interrupted at the deadline (checkpointed)" in err  # the teacher run goes first
    assert "cnn-18k-scratch-e2-s0: not started (deadline)" in err
    assert not list((tmp_path / "study").glob("*/summary.json"))

    # Again without a deadline: the interrupted run is resumed, the others start afresh.
    assert study.main(run_args(tmp_path, fake_edge_kd(tmp_path), methods=("scratch", "kd"))) == 0
    study_dir = tmp_path / "study"
    assert len(list(study_dir.glob("*/summary.json"))) == 4
    assert "--resume" in json.loads((study_dir / "cnn-18k-kd-e2-s0" / "args.json").read_text())
    assert "--resume" not in json.loads((study_dir / "cnn-18k-kd-e2-s1" / "args.json").read_text())


def _by_subset(both: float, rgb: float) -> dict:
    per_class = {"dent": both - 0.1, "stain": rgb}
    return {
        "rgb+height": {"accuracy": both, "per_class": per_class},
        "rgb": {"accuracy": rgb, "per_class": {"dent": 0.5, "stain": rgb}},
    }


def test_the_inspection_study_uses_the_config_of_its_student_and_reports_each_subset(study, tmp_path):
    args = run_args(tmp_path, fake_edge_kd(tmp_path), methods=("scratch", "edam+crd"))
    args[args.index("cnn-18k")] = "vit-rgb-student"
    args[args.index("wrn16-1")] = "mm-vit-teacher"
    assert study.main(args + ["--study", "inspection"]) == 0
    for run in (tmp_path / "study").iterdir():
        cmd = json.loads((run / "args.json").read_text())
        assert cmd[cmd.index("--config") + 1].endswith("inspection-camera.toml"), run.name
    assert "distill.method=edam+crd" in sets_of(tmp_path / "study" / "vit-rgb-student-edam+crd-e2-s0")
    # A fashion method is not part of the inspection study: refused before anything runs.
    bad = run_args(tmp_path, fake_edge_kd(tmp_path), methods=("crld",)) + ["--study", "inspection"]
    assert study.main(bad) == 2

    out = tmp_path / "report"
    for seed, (both, rgb) in enumerate([(0.9, 0.7), (0.92, 0.72)]):
        d = out / f"mm-vit-missing-student-kd-e40-s{seed}"
        d.mkdir(parents=True)
        s = {
            "student": {"test_accuracy": both, "params": 41322, "by_subset": _by_subset(both, rgb)},
            "teacher": {"model": "mm-vit-teacher", "test_accuracy": 0.95, "by_subset": _by_subset(0.95, 0.6)},
            "ece_after": 0.02,
            "coverage": 0.5,
            "subsets": [{"present": ["rgb"], "temperature": 1.5, "coverage": 0.25}],
        }
        (d / "summary.json").write_text(json.dumps(s))
    table = study.report(out)
    assert "| mm-vit-teacher (teacher) | – | – | 95.00 (n=1) | 60.00 (n=1) |" in table
    assert "| mm-vit-missing-student | kd | 40 | 91.00 ± 1.41 (n=2) | 71.00 ± 1.41 (n=2) |" in table
    assert "| mm-vit-missing-student | kd | 40 | 41322 | 50.0 ± 0.0 (n=2) | 25.0 ± 0.0 (n=2) |" in table
