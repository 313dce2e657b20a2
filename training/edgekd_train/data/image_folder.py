"""ImageFolder loader: ``root/<class>/*.png|jpg`` -> uint8 (N,C,S,S) + labels, via PIL.

Classes are the sorted sub-folder names. Each image goes through ``resample.model_uint8``
(the card's definition: colour first, then Pillow's antialiased BILINEAR) to ``size`` x ``size``
by stretching: the card says ``resize = "stretch"``, and the runtime does the same at inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .resample import model_uint8

EXTS = {".png", ".jpg", ".jpeg"}


class ImageFolderError(ValueError):
    """A missing or malformed image folder; the message names the path."""


def load_image_folder(
    root: str | Path, size: int, color: str = "gray", classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise ImageFolderError(f"{root}: no such folder (expected root/<class>/*.png|jpg)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    if classes is None:
        classes = found
    if not classes:
        raise ImageFolderError(f"{root}: no class sub-folders (expected root/<class>/*.png|jpg)")
    extra = set(found) - set(classes)
    if extra:
        raise ImageFolderError(f"{root}: classes {sorted(extra)} are not in the training classes")
    images, labels = [], []
    for k, name in enumerate(classes):
        d = root / name
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in EXTS) if d.is_dir() else []
        for p in files:
            try:
                with Image.open(p) as im:
                    images.append(model_uint8(im, size, size, color, "stretch"))
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise ImageFolderError(f"{p}: cannot read image: {e}") from None
            labels.append(k)
    if not images:
        raise ImageFolderError(f"{root}: no .png/.jpg images found")
    return np.stack(images), np.asarray(labels, dtype=np.int64), list(classes)
