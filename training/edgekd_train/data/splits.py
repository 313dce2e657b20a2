"""Build the train / calibration / test tensors a run needs from ``[data]``.

Calibration images are the LAST ``calibration_split`` images of the (limited) training set, never
test images: thresholds chosen on the test set would make the reported test numbers optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .fashion_mnist import CLASSES, IdxError, load_split
from .image_folder import ImageFolderError, load_image_folder
from .tensors import Normalizer, TensorData, channel_stats


class DataError(ValueError):
    """The data cannot be loaded or split; the message says which file or setting."""


@dataclass
class Splits:
    train: TensorData
    calibration: TensorData
    test: TensorData
    labels: list[str]
    normalizer: Normalizer
    color: str
    dataset: str


def _tensor(images: np.ndarray, labels: np.ndarray) -> TensorData:
    if images.ndim == 3:
        images = images[:, None]
    return TensorData(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)))


def load_splits(data_cfg) -> Splits:
    try:
        if data_cfg.dataset == "fashion-mnist":
            tr_x, tr_y = load_split("train", data_cfg.path)
            te_x, te_y = load_split("test", data_cfg.path)
            labels = list(CLASSES)
        else:
            root = Path(data_cfg.path)
            if not (root / "train").is_dir() or not (root / "test").is_dir():
                raise DataError(f"{root}: image-folder data needs {root}/train/<class>/ and {root}/test/<class>/")
            tr_x, tr_y, labels = load_image_folder(root / "train", data_cfg.image_size, data_cfg.color)
            te_x, te_y, _ = load_image_folder(root / "test", data_cfg.image_size, data_cfg.color, labels)
            # A fixed shuffle so the calibration tail holds every class, not just the last folder.
            order = np.random.default_rng(0).permutation(len(tr_y))
            tr_x, tr_y = tr_x[order], tr_y[order]
    except (IdxError, ImageFolderError) as e:
        raise DataError(str(e)) from None
    if data_cfg.limit_train is not None:
        tr_x, tr_y = tr_x[: data_cfg.limit_train], tr_y[: data_cfg.limit_train]
    if data_cfg.limit_test is not None:
        te_x, te_y = te_x[: data_cfg.limit_test], te_y[: data_cfg.limit_test]
    n_cal = data_cfg.calibration_split
    if n_cal >= len(tr_y):
        raise DataError(f"{data_cfg.path}: calibration_split {n_cal} leaves no training images out of {len(tr_y)}")
    if len(te_y) == 0:
        raise DataError(f"{data_cfg.path}: the test split is empty")
    train = _tensor(tr_x[:-n_cal], tr_y[:-n_cal])
    cal = _tensor(tr_x[-n_cal:], tr_y[-n_cal:])
    test = _tensor(te_x, te_y)
    mean, std = channel_stats(train.images)
    std = tuple(s if s > 0 else 1.0 for s in std)  # a constant image set must not divide by 0
    return Splits(train, cal, test, labels, Normalizer(mean, std), data_cfg.color, data_cfg.dataset)
