"""training/scripts/install_default.py: a finished run becomes the shipped default student."""

import shutil
from pathlib import Path

import numpy as np
import pytest

TRAINING = Path(__file__).resolve().parents[1]
REPO = TRAINING.parent
HAVE_FASHION = Path("/usr/share/datasets/fashion-mnist").is_dir()


@pytest.fixture(scope="module")
def installer(scripts):
    return scripts("install_default")


@pytest.fixture
def checkout(tmp_path):
    """A stand-in checkout holding a copy of the shipped samples (nothing of the real one is touched)."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "models" / "samples", repo / "models" / "samples")
    return repo


@pytest.mark.skipif(not HAVE_FASHION, reason="/usr/share/datasets/fashion-mnist absent (dataset-fashion-mnist)")
def test_a_fashion_run_is_installed_and_a_tampered_one_is_refused(installer, checkout, tmp_path, cli, teacher_weights):
    run = tmp_path / "run"
    r, _ = cli(
        [
            "distill",
            "--config",
            str(TRAINING / "configs" / "tiny-cpu.toml"),
            "--out",
            str(run),
            "--set",
            f'teacher.weights="{teacher_weights}"',
        ]
    )
    assert r.returncode == 0, r.stderr
    rows = installer.install(run, checkout)
    default = checkout / "models" / "default"
    assert (default / "student.onnx").read_bytes() == (run / "student.onnx").read_bytes()
    assert sorted(p.name for p in (default / "reference").iterdir()) == [
        f"{kind}_{k}.npy" for kind in ("input", "output") for k in range(4)
    ]
    assert (default / "distill-summary.json").is_file() and (default / "distill-config.toml").is_file()
    assert (checkout / "docs" / "img" / "default-reliability.png").is_file()
    tsv = (checkout / "models" / "samples.tsv").read_text().splitlines()
    assert tsv == rows and tsv[0] == "file\ttrue_label\tpredicted_label\tconfidence" and len(tsv) == 13
    assert tsv[1].startswith("0000-ankle-boot.png\tAnkle boot\t")

    # Reference input 0 that is not sample 0000 preprocessed: refused before anything is written.
    np.save(run / "reference" / "input_0.npy", np.zeros((1, 1, 28, 28), np.float32))
    (checkout / "models" / "samples.tsv").unlink()
    with pytest.raises(installer.InstallError, match=r"input_0\.npy: is not 0000-ankle-boot\.png preprocessed"):
        installer.install(run, checkout)
    assert not (checkout / "models" / "samples.tsv").exists()


def test_a_folder_that_is_not_a_run_is_named(installer, checkout, tmp_path, capsys):
    assert installer.main([str(tmp_path), "--repo", str(checkout)]) == 1
    assert f"install_default: {tmp_path}: no summary.json" in capsys.readouterr().err
