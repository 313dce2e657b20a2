"""Build the train / calibration / test data a run needs from ``[data]`` and ``[inputs]``.

Every data set becomes the one sample type, ``MultiTensorData``: Fashion-MNIST and image folders
are the one-input case (``image``), a manifest has one input per ``[inputs.<column>]``.

Calibration samples are the LAST ``calibration_split`` samples of the (limited) training set,
never test samples: thresholds chosen on the test set would make the reported test numbers
optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .fashion_mnist import CLASSES, IdxError, load_split
from .image_folder import ImageFolderError, load_image_folder
from .manifest import ManifestError, read_manifest
from .multimodal import COLORS, ModalitySpec, MultiNormalizer, MultiTensorData, load_manifest_data, modality_stats

SINGLE_INPUT = "image"  # the input of fashion-mnist and image-folder data


class DataError(ValueError):
    """The data cannot be loaded or split; the message says which file or setting."""


@dataclass
class Splits:
    train: MultiTensorData
    calibration: MultiTensorData
    test: MultiTensorData
    labels: list[str]
    specs: list[ModalitySpec]  # every input of the data set, in [inputs] order
    normalizer: MultiNormalizer
    dataset: str

    def spec(self, name: str) -> ModalitySpec:
        return next(s for s in self.specs if s.name == name)


def _single(images: np.ndarray, labels: np.ndarray) -> MultiTensorData:
    if images.ndim == 3:
        images = images[:, None]
    return MultiTensorData.one_input(
        torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)), SINGLE_INPUT
    )


def _image_data(data_cfg) -> tuple[MultiTensorData, MultiTensorData, list[str], list[ModalitySpec]]:
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
    train, test = _single(tr_x, tr_y), _single(te_x, te_y)
    channels = int(train.images[SINGLE_INPUT].shape[1])
    size = tuple(train.images[SINGLE_INPUT].shape[2:])
    return train, test, labels, [ModalitySpec(SINGLE_INPUT, channels, size)]


def _manifest_data(data_cfg, inputs) -> tuple[MultiTensorData, MultiTensorData, list[str], list[ModalitySpec]]:
    size = (data_cfg.image_size, data_cfg.image_size)
    specs = [
        ModalitySpec(name, next(c for c, n in COLORS.items() if n == i.color), size, i.optional)
        for name, i in inputs.items()
    ]
    labels = data_cfg.labels or sorted({r.label for r in read_manifest(data_cfg.path).records})
    train = load_manifest_data(data_cfg.path, specs, labels)
    test = load_manifest_data(data_cfg.test_path, specs, labels)
    # The same fixed shuffle as image folders: a manifest sorted by class keeps every class in the tail.
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(train)))
    return train.select(order), test, labels, specs


def load_splits(data_cfg, inputs=None) -> Splits:
    try:
        if data_cfg.dataset == "manifest":
            train, test, labels, specs = _manifest_data(data_cfg, inputs or {})
        else:
            train, test, labels, specs = _image_data(data_cfg)
    except (IdxError, ImageFolderError, ManifestError) as e:
        raise DataError(str(e)) from None
    if data_cfg.limit_train is not None:
        train = train.select(slice(0, data_cfg.limit_train))
    if data_cfg.limit_test is not None:
        test = test.select(slice(0, data_cfg.limit_test))
    n_cal = data_cfg.calibration_split
    if n_cal >= len(train):
        raise DataError(f"{data_cfg.path}: calibration_split {n_cal} leaves no training samples out of {len(train)}")
    if len(test) == 0:
        raise DataError(f"{data_cfg.test_path or data_cfg.path}: the test split is empty")
    cal, train = train.select(slice(len(train) - n_cal, None)), train.select(slice(0, len(train) - n_cal))
    try:
        stats = modality_stats(train)
    except ValueError as e:
        raise DataError(f"{data_cfg.path}: {e}") from None
    # A constant input must not divide by 0.
    stats = {k: (mean, tuple(s if s > 0 else 1.0 for s in std)) for k, (mean, std) in stats.items()}
    return Splits(train, cal, test, labels, specs, MultiNormalizer.from_stats(stats), data_cfg.dataset)
