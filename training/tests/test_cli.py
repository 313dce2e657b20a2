"""The whole ``python -m edgekd_train`` command as a subprocess: the contract with the Rust side."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd_train.export import parity_tolerance

TRAINING = Path(__file__).resolve().parents[1]
TINY = TRAINING / "configs" / "tiny-cpu.toml"
HAVE_DATA = Path("/usr/share/datasets/fashion-mnist").is_dir()
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason="/usr/share/datasets/fashion-mnist absent (dataset-fashion-mnist)"
)

SUMMARY_KEYS = {
    "event",
    "teacher",
    "student",
    "method",
    "onnx",
    "onnx_bytes",
    "temperature",
    "ece_before",
    "ece_after",
    "target",
    "coverage",
    "error_among_accepted",
    "notes",
    "reference_dir",
    "images_per_s",
    "losses",
    "plots",
}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(TRAINING) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "edgekd_train", *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _events(stdout):
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines]  # every stdout line must be JSON


def test_check():
    r = _run(["check"])
    assert r.returncode == 0
    (ev,) = _events(r.stdout)
    assert ev["event"] == "check" and isinstance(ev["cuda"], bool) and ev["torch"]


@needs_data
def test_distill_tiny_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = _run(["distill", "--config", str(TINY), "--out", str(out)])
    assert r.returncode == 0, r.stderr
    evs = _events(r.stdout)
    kinds = [e["event"] for e in evs]
    assert kinds[0] == "start" and kinds[-1] == "summary"
    assert [e["phase"] for e in evs if e["event"] == "phase"] == ["teacher", "student", "calibrate", "export"]
    summary = evs[-1]
    assert set(summary) >= SUMMARY_KEYS
    assert summary["teacher"]["model"] == "wrn16-1" and summary["student"]["params"] > 0
    # KD's named terms, averaged over the student's last epoch, beside the total the events carry.
    assert set(summary["losses"]) == {"ce", "kd"} and all(v > 0 for v in summary["losses"].values())
    epoch = [e for e in evs if e["event"] == "epoch" and e["phase"] == "student"][-1]
    assert epoch["losses"] == summary["losses"]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert [json.loads(ln) for ln in (out / "events.jsonl").read_text().splitlines()] == evs
    for f in (
        "config.resolved.toml",
        "checkpoints/teacher.pt",
        "checkpoints/student.pt",
        "teacher.pt",
        "student.onnx",
        "reliability.png",
        "risk_coverage.png",
    ):
        assert (out / f).is_file(), f
    for k in range(8):
        assert (out / "reference" / f"input_{k}.npy").is_file() and (out / "reference" / f"output_{k}.npy").is_file()
    assert summary["parity_max_abs_diff"] <= parity_tolerance()

    # --resume on a finished run: both phases are skipped from their checkpoints, same summary shape.
    r2 = _run(["distill", "--config", str(TINY), "--out", str(out), "--resume"])
    assert r2.returncode == 0, r2.stderr
    evs2 = _events(r2.stdout)
    skipped = [e for e in evs2 if e["event"] == "phase" and "skipped" in e]
    assert [e["phase"] for e in skipped] == ["teacher", "student"]
    assert evs2[-1]["student"]["test_accuracy"] == summary["student"]["test_accuracy"]


@pytest.mark.parametrize(
    "extra,kind",
    [
        (["--set", "student.epochs=abc"], "config"),
        (["--set", "distill.method=nope"], "config"),
        (["--set", "distill.views=crld"], "config"),  # kd with CRLD's views: an invalid combination
        (["--set", "data.path=/nonexistent/fashion"], "data"),
    ],
)
def test_bad_config_exits_2_without_traceback(tmp_path, extra, kind):
    r = _run(["distill", "--config", str(TINY), "--out", str(tmp_path / "o"), *extra])
    assert r.returncode == 2, r.stderr
    (ev,) = [e for e in _events(r.stdout) if e["event"] == "error"]
    assert ev["kind"] == kind and ev["message"]
    assert "Traceback" not in r.stderr


def test_missing_config_file(tmp_path):
    r = _run(["distill", "--config", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert _events(r.stdout)[-1]["kind"] == "config"


def _gloo_available():
    try:
        import torch.distributed as dist

        return dist.is_available() and dist.is_gloo_available()
    except Exception:
        return False


@needs_data
@pytest.mark.skipif(not _gloo_available(), reason="torch.distributed gloo backend not available")
def test_ddp_two_cpu_processes(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    out = tmp_path / "ddp"
    r = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "edgekd_train",
            "distill",
            "--config",
            str(TINY),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    evs = _events(r.stdout)
    assert evs[0]["event"] == "start" and evs[0]["world_size"] == 2
    assert sum(e["event"] == "start" for e in evs) == 1  # only rank 0 emits
    assert set(evs[-1]) >= SUMMARY_KEYS and evs[-1]["event"] == "summary"
    assert (out / "student.onnx").is_file()
