"""The one image → model-input definition, shared by every loader and by the runtime's reference.

A card's input names it as ``resample = "bilinear-antialias"`` (the only value so far; a card
without the field means the same, because the trainer has always resized with Pillow's BILINEAR).
edge-kd's Rust preprocessing (``src/preprocess``) implements it with fast_image_resize, whose
convolution is Pillow's, and is tested against this module to ≤ 1 grey level.

1. Decode with Pillow. Alpha is dropped (not composited). 16-bit gray (``I;16``) stays 16-bit
   until step 4; 16-bit colour is what Pillow decodes it to (8-bit, the high byte).
2. Colour, in 8 bits at the source's size, before resizing: to gray as Pillow's
   ``convert("L")`` (``(19595 R + 38470 G + 7471 B + 32768) >> 16``); gray → rgb/bgr replicates
   and rgb → bgr reorders (both commute with resizing, so where they happen does not matter).
3. Resize with ``Image.resize(..., Image.BILINEAR, box=...)``: a triangle filter whose support
   grows with the scale when shrinking (antialiased), computed in 8-bit fixed point (16-bit for
   ``I;16``), each pass rounded. ``stretch``: the whole frame to H x W. ``center-crop``: the box
   of the output's aspect centred in the frame, s = min(w/W, h/H),
   box = ((w - W s)/2, (h - H s)/2, (w + W s)/2, (h + H s)/2). ``letterbox``: the whole frame
   to nh x nw (s = max(w/W, h/H), nh = max(1, floor(h/s + 0.5)), likewise nw), pasted at
   ((W - nw)//2, (H - nh)//2) on a canvas of raw 0. A frame already H x W is used as it is.
4. 16-bit results are divided by 257 (the runtime keeps the quotient; training rounds it to
   uint8, which is within half a level).
5. Normalise ``(v * scale - mean[c]) / std[c]`` in float32, NCHW (``tensors.Normalizer``).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

RESAMPLE = "bilinear-antialias"
RESIZES = ("stretch", "center-crop", "letterbox")
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def letterbox_box(h: int, w: int, H: int, W: int) -> tuple[int, int, int, int]:
    """(top, left, nh, nw) of the scaled frame inside the H x W output."""
    s = max(h / H, w / W)
    nh = max(1, math.floor(h / s + 0.5))
    nw = max(1, math.floor(w / s + 0.5))
    return (H - nh) // 2, (W - nw) // 2, nh, nw


def center_crop_box(h: int, w: int, H: int, W: int) -> tuple[float, float, float, float]:
    """Pillow's ``box`` (left, top, right, bottom) of the centred crop with the output's aspect."""
    s = min(h / H, w / W)
    return ((w - W * s) / 2, (h - H * s) / 2, (w + W * s) / 2, (h + H * s) / 2)


def _color(im: Image.Image, color: str) -> Image.Image:
    """Step 2 for an 8-bit image; gray → rgb replication is left to ``to_channels``."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if color == "gray":
        return im if im.mode == "L" else im.convert("L")
    if im.mode in ("L", "LA", "1"):
        return im.convert("L")
    return im.convert("RGB")


def _resize(im: Image.Image, H: int, W: int, resize: str) -> Image.Image:
    w, h = im.size
    if (w, h) == (W, H):
        return im
    if resize == "stretch":
        return im.resize((W, H), Image.BILINEAR)
    if resize == "center-crop":
        return im.resize((W, H), Image.BILINEAR, box=center_crop_box(h, w, H, W))
    if resize == "letterbox":
        top, left, nh, nw = letterbox_box(h, w, H, W)
        canvas = Image.new(im.mode, (W, H), 0)
        canvas.paste(im if (nw, nh) == (w, h) else im.resize((nw, nh), Image.BILINEAR), (left, top))
        return canvas
    raise ValueError(f"unknown resize {resize!r} (expected one of {', '.join(RESIZES)})")


def to_channels(a: np.ndarray, color: str) -> np.ndarray:
    """(H, W) or (H, W, 3) → (H, W, C) for the card's colour: replicate gray, reorder bgr."""
    if a.ndim == 2:
        a = a[:, :, None]
    if color == "gray":
        return a
    if color not in ("rgb", "bgr"):
        raise ValueError(f"unknown color {color!r}")
    rgb = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
    return rgb[:, :, ::-1] if color == "bgr" else rgb


def model_pixels(im: Image.Image, H: int, W: int, color: str, resize: str) -> np.ndarray:
    """Steps 1-4 on an opened image: float64 (H, W, C) on the 0..255 scale, unrounded for
    16-bit sources (what the runtime feeds the model)."""
    im.load()
    if im.mode in SIXTEEN_BIT_MODES:
        a = np.asarray(_resize(im, H, W, resize)).astype(np.float64) / 257.0
    elif im.mode == "I":
        raise ValueError(f"32-bit integer images (mode I) are not supported (size {im.size})")
    else:
        a = np.asarray(_resize(_color(im, color), H, W, resize)).astype(np.float64)
    return to_channels(a, color)


def model_uint8(im: Image.Image, H: int, W: int, color: str, resize: str) -> np.ndarray:
    """What training stores: ``model_pixels`` rounded to uint8, (C, H, W)."""
    a = np.clip(np.rint(model_pixels(im, H, W, color, resize)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a.transpose(2, 0, 1))
