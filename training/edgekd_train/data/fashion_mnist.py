"""Fashion-MNIST loader for the four IDX ``.gz`` files (no downloads).

The Debian package ``dataset-fashion-mnist`` installs them in
``/usr/share/datasets/fashion-mnist``::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class IdxError(ValueError):
    """A malformed or missing IDX file; the message names the file."""


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise IdxError(f"{path}: file not found (install dataset-fashion-mnist or pass the folder)")
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise IdxError(f"{path}: not a readable gzip file: {e}") from e


def load_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read an idx3-ubyte.gz file into a uint8 array of shape (N, rows, cols)."""
    path = Path(path)
    raw = _read(path)
    if len(raw) < 16:
        raise IdxError(f"{path}: {len(raw)} bytes, too short for an IDX image header")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IMAGES_MAGIC:
        raise IdxError(f"{path}: magic {magic:#010x}, expected {IMAGES_MAGIC:#010x} (idx3 ubyte images)")
    expected = 16 + n * rows * cols
    if len(raw) != expected:
        raise IdxError(f"{path}: {len(raw)} bytes, header says {n}x{rows}x{cols} images -> {expected} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols).copy()


def load_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """Read an idx1-ubyte.gz file into a uint8 array of shape (N,)."""
    path = Path(path)
    raw = _read(path)
    if len(raw) < 8:
        raise IdxError(f"{path}: {len(raw)} bytes, too short for an IDX label header")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != LABELS_MAGIC:
        raise IdxError(f"{path}: magic {magic:#010x}, expected {LABELS_MAGIC:#010x} (idx1 ubyte labels)")
    if len(raw) != 8 + n:
        raise IdxError(f"{path}: {len(raw)} bytes, header says {n} labels -> {8 + n} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=8).copy()


def load_split(split: str, root: str | os.PathLike = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Load ``split`` ("train" or "test") as (images uint8 (N,28,28), labels uint8 (N,))."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    lab_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    images = load_idx_images(img_path)
    labels = load_idx_labels(lab_path)
    if images.shape[0] != labels.shape[0]:
        raise IdxError(f"{img_path}: {images.shape[0]} images but {lab_path} has {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise IdxError(f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise IdxError(f"{lab_path}: label {int(labels.max())} out of range 0..{len(CLASSES) - 1}")
    return images, labels
