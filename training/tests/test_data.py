"""Loader shapes and labels: synthetic IDX files, the real Debian files, image folders, augmentation."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd_train.config import DataConfig
from edgekd_train.data.fashion_mnist import DEFAULT_ROOT, load_split
from edgekd_train.data.image_folder import load_image_folder
from edgekd_train.data.splits import DataError, load_splits
from edgekd_train.data.tensors import TensorData, augment, epoch_batches


def _write_idx(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(images), 28, 28) + images.tobytes())
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, len(labels)) + labels.tobytes())


@pytest.fixture
def synth(tmp_path):
    rng = np.random.default_rng(0)
    tr = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    te = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path, "train", tr, (np.arange(50) % 10).astype(np.uint8))
    _write_idx(tmp_path, "t10k", te, (np.arange(12) % 10).astype(np.uint8))
    return tmp_path, tr


def test_synthetic_idx_shapes_and_splits(synth):
    root, tr = synth
    x, y = load_split("train", root)
    assert x.shape == (50, 28, 28) and x.dtype == np.uint8 and list(y[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    s = load_splits(DataConfig(path=str(root), calibration_split=10, limit_test=5))
    # One input, "image", always present: the one-input case of the multimodal sample type.
    assert list(s.train.images) == ["image"] and [sp.name for sp in s.specs] == ["image"]
    assert s.train.images["image"].shape == (40, 1, 28, 28) and bool(s.train.present["image"].all())
    assert s.calibration.images["image"].shape == (10, 1, 28, 28)
    # calibration = the END of the training set
    assert torch.equal(s.calibration.images["image"][:, 0], torch.from_numpy(tr[40:]))
    assert s.test.labels.tolist() == [0, 1, 2, 3, 4]
    assert len(s.labels) == 10 and s.normalizer.by_modality["image"].scale == pytest.approx(1 / 255)


def test_missing_data_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_splits(DataConfig(path=str(tmp_path)))


@pytest.mark.skipif(
    not Path(DEFAULT_ROOT).is_dir(), reason=f"{DEFAULT_ROOT} absent (apt-get install dataset-fashion-mnist)"
)
def test_real_fashion_mnist():
    x, y = load_split("test", DEFAULT_ROOT)
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert np.bincount(y).tolist() == [1000] * 10
    assert y[:5].tolist() == [9, 2, 1, 1, 6]  # well-known first test labels


def test_image_folder(tmp_path):
    from PIL import Image

    for c, v in (("bad", 200), ("good", 30)):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 14), v, np.uint8)).save(tmp_path / c / f"{i}.png")
    x, y, classes = load_image_folder(tmp_path, 16, "rgb")
    assert classes == ["bad", "good"] and x.shape == (6, 3, 16, 16) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(x[0].min()) == 200


def test_augment_and_sharding():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.uint8).view(2, 1, 5, 5)
    g = torch.Generator().manual_seed(0)
    a = augment(x, g, flip=True, shift=2)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(augment(x, g, flip=False, shift=0), x)
    d = TensorData(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    seen = [torch.cat([b[1] for b in epoch_batches(d, 3, 0, 0, r, 2, drop_last=False)]) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 5 and not set(seen[0].tolist()) & set(seen[1].tolist())
