"""The input views a method trains on, made on the training device from the uint8 batch.

* ``"single"``: the weak view every method uses (random flip + shift, ``tensors.augment``).
* ``"crld"``: the weak view plus a strong view (methods.md section 4.2): an independent weak draw,
  then RandAugment (``n`` ops drawn uniformly with replacement from 14, each at a magnitude drawn
  uniformly in its range), then Cutout.

The strong ops are written once for the whole batch as branch-free tensor ops. Every random number
a batch needs comes from one ``torch.rand`` call; each colour op is computed for the whole batch
and ``torch.where`` keeps each sample's pick, and the five geometric ops share one affine
``grid_sample``. That is ~10x the arithmetic of the one op a sample uses, which on 28x28 images
is far cheaper than a launch per sample or per op subset, and it has static shapes and no
data-dependent Python control flow, so ``torch.compile`` can fuse it into a few kernels.

Pixel values stay in the uint8 range [0, 255] (as float) and are rounded after each op, as in the
PIL pipeline of the reference code; normalisation is the card's formula, bit for bit the same as
``tensors.Normalizer``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .tensors import Normalizer, augment

VIEW_KINDS = ("single", "crld")

# Order fixes the op index a uniform draw maps to; the geometric ops come last (one grid_sample).
STRONG_OPS = (
    "identity",
    "autocontrast",
    "equalize",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
_FIRST_GEOMETRIC = STRONG_OPS.index("rotate")


def _op(name: str) -> int:
    return STRONG_OPS.index(name)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL's "L" conversion (ITU-R 601-2); a grayscale image is its own luma."""
    if x.shape[1] != 3:
        return x[:, :1] if x.shape[1] == 1 else x.mean(1, keepdim=True)
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, x, factor)``: what ImageEnhance does for every enhancer."""
    return degenerate + factor * (x - degenerate)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.autocontrast`` (cutoff 0), per sample and channel."""
    lo = x.amin((2, 3), keepdim=True).double()
    hi = x.amax((2, 3), keepdim=True).double()
    # PIL's lut in double precision, int(i * scale + offset): pixels whose exact value is an
    # integer land just below it, and float32 (or ``255.0 / t``, a reciprocal times 255) rounds
    # some of them the other way.
    span = (hi - lo).clamp(min=1.0)
    scale = torch.full_like(span, 255.0) / span
    out = (x.double() * scale - lo * scale).floor().clamp(0, 255).to(x.dtype)
    return torch.where(hi > lo, out, x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize``, per sample and channel, with batched 256-bin histograms."""
    b, c, h, w = x.shape
    xi = x.round().clamp(0, 255).long().reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, xi, torch.ones_like(xi))
    # PIL: step = (pixels - count of the last non-empty bin) // 255; lut[i] = (step//2 + cum[i]) // step.
    last_bin = 255 - (hist > 0).flip(1).long().argmax(1, keepdim=True)
    step = (h * w - hist.gather(1, last_bin)) // 255
    cum = hist.cumsum(1) - hist
    lut = ((step // 2 + cum) // step.clamp(min=1)).clamp(max=255)
    out = lut.gather(1, xi).to(x.dtype).reshape(b, c, h, w)
    # step == 0 covers a single-valued channel too: PIL leaves those unchanged.
    return torch.where((step == 0).reshape(b, c, 1, 1), x, out)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, others 1, /13) with the border left as it was."""
    inner = (F.avg_pool2d(x, 3, stride=1) * 9.0 + 4.0 * x[:, :, 1:-1, 1:-1]) / 13.0
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = inner.round()
    return out


def _affine(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Rotate / ShearX / ShearY / TranslateX / TranslateY about the image centre, nearest
    neighbour, zero fill; samples whose op is not geometric get the identity matrix."""
    b, _, h, w = x.shape
    s = mag * 2.0 - 1.0  # symmetric ranges: [-1, 1) of the op's bound
    angle = s * math.radians(30.0)
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    rot = op == _op("rotate")
    a = torch.where(rot, torch.cos(angle), one)
    d = a
    bxy = torch.where(rot, -torch.sin(angle), torch.where(op == _op("shear_x"), 0.3 * s, zero))
    cyx = torch.where(rot, torch.sin(angle), torch.where(op == _op("shear_y"), 0.3 * s, zero))
    tx = torch.where(op == _op("translate_x"), 0.3 * s * w, zero)
    ty = torch.where(op == _op("translate_y"), 0.3 * s * h, zero)
    # Pixel-space matrix about the centre -> affine_grid's [-1, 1] coordinates (align_corners=False).
    theta = torch.stack(
        [torch.stack([a, bxy * (h / w), tx * (2.0 / w)], 1), torch.stack([cyx * (w / h), d, ty * (2.0 / h)], 1)], 1
    )
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def rand_augment_op(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """One RandAugment round: sample i gets op ``STRONG_OPS[op[i]]`` at magnitude ``mag[i]`` in
    [0, 1), mapped to the op's range of methods.md section 4.2. ``x`` is float in [0, 255]."""
    v = mag.view(-1, 1, 1, 1)
    sel = op.view(-1, 1, 1, 1)
    factor = 0.05 + 0.9 * v  # Brightness, Color, Contrast, Sharpness in [0.05, 0.95]
    luma = _luma(x)
    mean = luma.mean((1, 2, 3), keepdim=True).add(0.5).floor()  # PIL Contrast: int(mean + 0.5)
    bits = (4.0 + 4.0 * v).floor()  # Posterize: int(v), v in [4, 8)
    q = torch.pow(2.0, 8.0 - bits)
    candidates = {
        "autocontrast": lambda: autocontrast(x),
        "equalize": lambda: equalize(x),
        "brightness": lambda: x * factor,
        "color": lambda: _blend(luma.expand_as(x), x, factor),
        "contrast": lambda: _blend(mean.expand_as(x), x, factor),
        "sharpness": lambda: _blend(_smooth(x), x, factor),
        "posterize": lambda: (x / q).floor() * q,
        "solarize": lambda: torch.where(x < 256.0 * v, x, 255.0 - x),  # threshold in [0, 256]
    }
    out = x
    for name, fn in candidates.items():
        out = torch.where(sel == _op(name), fn(), out)
    out = torch.where(sel >= _FIRST_GEOMETRIC, _affine(x, op, mag), out)
    return out.round().clamp(0, 255)


def cutout(x: torch.Tensor, u: torch.Tensor, max_frac: float, fill: torch.Tensor) -> torch.Tensor:
    """Cutout as in the reference code: a square of side ``v * width``, v ~ U(0, max_frac), centred
    uniformly in the image and clipped to it. ``u`` holds three uniforms per sample (v, cx, cy)."""
    b, _, h, w = x.shape
    side = max_frac * u[:, 0] * w
    x0 = (u[:, 1] * w - side / 2).clamp(min=0).floor()
    y0 = (u[:, 2] * h - side / 2).clamp(min=0).floor()
    x1 = (x0 + side).clamp(max=w).floor()
    y1 = (y0 + side).clamp(max=h).floor()
    cols = torch.arange(w, device=x.device, dtype=x.dtype)
    rows = torch.arange(h, device=x.device, dtype=x.dtype)
    in_x = (cols[None, :] >= x0[:, None]) & (cols[None, :] < x1[:, None])
    in_y = (rows[None, :] >= y0[:, None]) & (rows[None, :] < y1[:, None])
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    return torch.where(mask, fill, x)


def strong_ops(x: torch.Tensor, u: torch.Tensor, fill: torch.Tensor, n_ops: int, cutout_frac: float) -> torch.Tensor:
    """RandAugment(n_ops) then Cutout on float pixels; ``u`` is (B, 2 * n_ops + 3) uniforms. Pure:
    the same inputs give the same output, which is what lets torch.compile trace it."""
    n = len(STRONG_OPS)
    for r in range(n_ops):
        op = (u[:, 2 * r] * n).floor().clamp(max=n - 1).long()
        x = rand_augment_op(x, op, u[:, 2 * r + 1])
    if cutout_frac > 0:
        x = cutout(x, u[:, 2 * n_ops :], cutout_frac, fill)
    return x


class ViewMaker:
    """uint8 batch -> ``{"image": weak}`` or ``{"image": weak, "image_strong": strong}``, normalised,
    in channels_last when asked. Holds the normalisation constants on the device: building them per
    step would be a blocking host-to-device copy every step."""

    def __init__(
        self,
        kind: str,
        norm: Normalizer,
        device: torch.device,
        *,
        flip: bool,
        shift: int,
        channels_last: bool = False,
        n_ops: int = 2,
        cutout_frac: float = 0.5,
        compile_fn: Callable[[Callable], Callable] | None = None,
    ):
        if kind not in VIEW_KINDS:
            raise ValueError(f"unknown views {kind!r} (expected one of {', '.join(VIEW_KINDS)})")
        self.kind = kind
        self.flip, self.shift = flip, shift
        self.channels_last = channels_last
        self.n_ops, self.cutout_frac = n_ops, cutout_frac
        c = len(norm.mean)
        self.mean = torch.tensor(norm.mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
        self.std = torch.tensor(norm.std, dtype=torch.float32, device=device).view(1, c, 1, 1)
        self.scale = torch.tensor(norm.scale, dtype=torch.float32)  # CPU 0-dim: a scalar to the kernel
        # Cutout fills with the data's mean pixel, the analogue of the CIFAR mean (125, 123, 114)
        # the reference code uses; it normalises to 0.
        self.fill = self.mean / norm.scale
        self._strong = compile_fn(strong_ops) if compile_fn is not None else strong_ops

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        # The exact expression of Normalizer.__call__, so single-view training is unchanged bit for bit.
        x = (x.float() * self.scale - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, u8: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        batch = {"image": self.normalise(augment(u8, gen, self.flip, self.shift))}
        if self.kind == "crld":
            strong = augment(u8, gen, self.flip, self.shift).float()
            u = torch.rand(u8.shape[0], 2 * self.n_ops + 3, device=u8.device, generator=gen)
            batch["image_strong"] = self.normalise(self._strong(strong, u, self.fill, self.n_ops, self.cutout_frac))
        return batch
