"""training/scripts/evaluate.py: a run's shipped student checked on its test split."""

from pathlib import Path

import pytest

TRAINING = Path(__file__).resolve().parents[1]
HAVE_FASHION = Path("/usr/share/datasets/fashion-mnist").is_dir()


@pytest.fixture(scope="module")
def evaluate(scripts):
    return scripts("evaluate")


@pytest.mark.skipif(not HAVE_FASHION, reason="/usr/share/datasets/fashion-mnist absent (dataset-fashion-mnist)")
def test_rows_reproduce_the_run_and_a_bound_accepts_less(evaluate, tmp_path, cli, teacher_weights, capsys):
    out = tmp_path / "run"
    r, evs = cli(
        [
            "distill",
            "--config",
            str(TRAINING / "configs" / "tiny-cpu.toml"),
            "--out",
            str(out),
            "--set",
            f'teacher.weights="{teacher_weights}"',
            "--set",
            "calibration.bound_confidence=0",
        ]
    )
    assert r.returncode == 0, r.stderr
    summary = evs[-1]
    assert evaluate.main([str(out), "--confidence", "0", "0.9"]) == 0
    header, _rule, *rows = capsys.readouterr().out.splitlines()
    assert header.startswith("| run | bound confidence |")
    point, bound = (row.split("|")[1:-1] for row in rows)
    assert [c.strip() for c in point[:2]] == ["run", "0"] and bound[1].strip() == "0.9"
    # The ONNX file under onnxruntime gives the run's own test accuracy, and at confidence 0
    # the thresholds (and so the calibration coverage) are the run's.
    assert float(point[2]) == pytest.approx(summary["student"]["test_accuracy"] * 100, abs=0.01)
    assert float(point[4]) == pytest.approx(summary["coverage"] * 100, abs=0.05)
    assert float(bound[5]) <= float(point[5])  # a bound never accepts more


def test_a_folder_that_is_not_a_run_is_named(evaluate, tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"evaluate: {tmp_path}: " in err and "config.resolved.toml" in err
