"""training/scripts/gpu_check.sh: the owed GPU measurements as one bounded command. Run here on a
stand-in binary (the real runs need a GPU): the phases, their order, the deadline, what comes back."""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_study import fake_edge_kd

REPO = Path(__file__).resolve().parents[2]

needs_tools = pytest.mark.skipif(not (shutil.which("bash") and shutil.which("tar")), reason="needs bash and tar")


def gpu_check(tmp_path, binary, budget):
    out = tmp_path / "out"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "GPU_CHECK_DEVICE": "cpu",
        "EDGE_KD_BIN": str(binary),
        "EDGE_KD_DATA": str(tmp_path),
        "EDGE_KD_PYTHON": sys.executable,
        "HOME": str(tmp_path),
    }
    script = tmp_path / "repo" / "training" / "scripts" / "gpu_check.sh"
    r = subprocess.run(
        ["bash", str(script), "run", str(out), str(budget)],
        cwd=tmp_path / "repo",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return r, out


@pytest.fixture
def repo(tmp_path):
    """The script works in its checkout (runs/ lands there): a copy of the parts it uses."""
    dst = tmp_path / "repo"
    shutil.copytree(REPO / "training" / "scripts", dst / "training" / "scripts")
    shutil.copytree(REPO / "training" / "configs", dst / "training" / "configs")
    return dst


@needs_tools
def test_every_phase_runs_in_order_and_the_results_come_back(tmp_path, repo):
    r, out = gpu_check(tmp_path, fake_edge_kd(tmp_path), budget=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "log.txt", "runs.tgz", "table.md", "teacher.pt"]
    log = (out / "log.txt").read_text()
    phases = [log.index(f"{k}/4 ") for k in range(1, 5)]
    assert phases == sorted(phases)
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| cnn-")]
    # Both students x 5 methods at 20 epochs, plus the batch-256 eager reference.
    assert len(rows) == 11 and "The same card without the fast path" in table
    with tarfile.open(out / "runs.tgz") as tar:
        names = tar.getnames()
    assert "runs/gpu-check/study/cnn-70k-kd-e20-s0/summary.json" in names
    assert not any(n.endswith("teacher.pt") or "/checkpoints" in n for n in names)
    # Phase 1 trained the teacher; every later run was handed its weights.
    first = (repo / "runs/gpu-check/study/cnn-70k-kd-e20-s0/args.json").read_text()
    later = (repo / "runs/gpu-check/study/cnn-18k-crld-e20-s2/args.json").read_text()
    teacher = (repo / "runs/gpu-check/study/cnn-70k-kd-e20-s0/teacher.pt").resolve()
    assert "teacher.epochs=20" in first and f"teacher.weights={teacher}" in later


@needs_tools
def test_a_short_lease_stops_cleanly_and_still_returns_what_it_has(tmp_path, repo):
    r, out = gpu_check(tmp_path, fake_edge_kd(tmp_path, hang=True), budget=35)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (out / "log.txt").read_text()
    assert "interrupted at the deadline (checkpointed)" in log and "no teacher" in log
    assert (out / "runs.tgz").is_file() and (out / "table.md").is_file()
