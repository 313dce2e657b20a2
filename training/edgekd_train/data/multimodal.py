"""Device-resident multimodal data: several aligned images per sample, some of them optional.

The multimodal analogue of ``tensors``: every modality is one tensor (N,C,H,W) on the training
device, with a ``present`` mask per modality, so batches are gathered, augmented, dropped out and
normalised there. Every image goes through ``resample.model_pixels``, the definition the runtime
implements, whatever its bit depth.

A 16-bit modality (a height map) is stored as float32 on the 0..255 scale, the resample
definition's ``/ 257`` quotient unrounded: rounding to uint8 would merge 257 height counts into
one level (0.01 µm steps into 2.6 µm ones on the inspection set), and the runtime feeds the model
the unrounded quotient. The card's normalisation ``(v * scale - mean) / std`` is then the same
for every modality. 8-bit modalities stay uint8 (a quarter of the memory).

The batch contract, what models and distillers consume: ``{name: float32 (B,C,H,W) normalised}``
for every modality; ``{name}_present: float32 (B,)`` (1.0 present, 0.0 missing) for each optional
one, whose image is exactly zero in normalised space where missing; ``label`` and ``index`` (the
sample's row in the data set), both int64 (B,).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .manifest import Manifest, ManifestError, Record, load_images, read_manifest
from .resample import model_pixels
from .tensors import Normalizer, TensorData, channel_stats, epoch_batches

COLORS = {1: "gray", 3: "rgb"}


@dataclass(frozen=True)
class ModalitySpec:
    name: str  # the manifest's column
    channels: int  # 1 (gray) or 3 (rgb)
    size: tuple[int, int]  # (H, W) the model sees
    optional: bool = False  # a sample may lack it (a sensor that was down)

    def __post_init__(self) -> None:
        if self.channels not in COLORS:
            raise ValueError(f"modality {self.name}: channels must be 1 or 3, not {self.channels}")


@dataclass
class MultiTensorData:
    images: dict[str, torch.Tensor]  # uint8, or float32 0..255 for 16-bit sources: (N, C, H, W)
    present: dict[str, torch.Tensor]  # bool (N,)
    labels: torch.Tensor  # int64 (N,)

    @classmethod
    def one_input(cls, images: torch.Tensor, labels: torch.Tensor, name: str = "image") -> MultiTensorData:
        """Data of one always-present input (Fashion-MNIST, an image folder)."""
        return cls({name: images}, {name: torch.ones(len(labels), dtype=torch.bool, device=labels.device)}, labels)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, rows) -> MultiTensorData:
        """The samples at ``rows`` (a slice or an index tensor)."""
        return MultiTensorData(
            {k: v[rows] for k, v in self.images.items()},
            {k: v[rows] for k, v in self.present.items()},
            self.labels[rows],
        )

    def to(self, device) -> MultiTensorData:
        return MultiTensorData(
            {k: v.to(device) for k, v in self.images.items()},
            {k: v.to(device) for k, v in self.present.items()},
            self.labels.to(device),
        )


def load_manifest_data(
    manifest_path: str | Path, specs: list[ModalitySpec], labels: list[str], resize: str = "stretch"
) -> MultiTensorData:
    """The manifest's samples, each modality resampled to its spec; a missing optional cell is
    zeros with ``present`` False."""
    manifest = read_manifest(manifest_path)
    _check_columns(manifest, specs)
    n = len(manifest.records)
    pixels = {s.name: np.zeros((n, s.channels, *s.size), dtype=np.float32) for s in specs}
    present = {s.name: np.zeros(n, dtype=bool) for s in specs}
    sixteen_bit = dict.fromkeys(pixels, False)
    label_ids = []
    for row, record in enumerate(manifest.records):
        label_ids.append(_label_id(manifest.path, record, labels))
        arrays = load_images(record)
        for spec in specs:
            a = arrays[spec.name]
            if a is None:
                if not spec.optional:
                    raise ManifestError(
                        f"{manifest.path}: sample {record.id!r}: column {spec.name}: empty, "
                        "but the modality is required (mark it optional or fill the cell)"
                    )
                continue
            sixteen_bit[spec.name] |= a.dtype == np.uint16
            pixels[spec.name][row] = _resampled(a, spec, resize)
            present[spec.name][row] = True
    images = {k: torch.from_numpy(v if sixteen_bit[k] else v.astype(np.uint8)) for k, v in pixels.items()}
    return MultiTensorData(
        images, {k: torch.from_numpy(v) for k, v in present.items()}, torch.tensor(label_ids, dtype=torch.int64)
    )


def _check_columns(manifest: Manifest, specs: list[ModalitySpec]) -> None:
    unknown = [s.name for s in specs if s.name not in manifest.modalities]
    if unknown:
        raise ManifestError(
            f"{manifest.path}:1: no column {', '.join(unknown)} (the manifest has {', '.join(manifest.modalities)})"
        )


def _label_id(path: Path, record: Record, labels: list[str]) -> int:
    if record.label not in labels:
        raise ManifestError(
            f"{path}: sample {record.id!r}: column label: {record.label!r} is not a class ({', '.join(labels)})"
        )
    return labels.index(record.label)


def _resampled(a: np.ndarray, spec: ModalitySpec, resize: str) -> np.ndarray:
    """Steps 1-4 of the resample definition, (C, H, W) on the 0..255 scale; exact integers for
    8-bit sources. ``load_images`` keeps the stored bit depth, so ``fromarray`` gives Pillow
    back the mode it decoded (I;16, L or RGB)."""
    from PIL import Image

    h, w = spec.size
    return model_pixels(Image.fromarray(a), h, w, COLORS[spec.channels], resize).transpose(2, 0, 1)


def modality_stats(data: MultiTensorData) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """Per-modality ``channel_stats`` over the samples that have it: the zeros standing in for a
    missing image would drag the mean down and inflate the std."""
    stats = {}
    for name, images in data.images.items():
        mask = data.present[name]
        if not bool(mask.any()):
            raise ValueError(f"modality {name}: no sample has it, so it has no statistics")
        stats[name] = channel_stats(images[mask])
    return stats


@dataclass(frozen=True)
class MultiNormalizer:
    by_modality: dict[str, Normalizer]

    @classmethod
    def from_stats(cls, stats: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]) -> MultiNormalizer:
        return cls({name: Normalizer(mean, std) for name, (mean, std) in stats.items()})

    def __call__(self, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.by_modality[name](x) for name, x in images.items()}


def augment_aligned(
    images: dict[str, torch.Tensor], gen: torch.Generator, flip: bool, shift: int
) -> dict[str, torch.Tensor]:
    """``tensors.augment`` with one draw per sample shared by every modality, so they stay
    registered to each other. The draws come in ``augment``'s order, so one modality alone is
    augmented exactly as ``augment`` would."""
    sizes = {name: tuple(x.shape[2:]) for name, x in images.items()}
    if len(set(sizes.values())) > 1:
        # A shift of k pixels at one size is a fraction of a pixel at another: no exact alignment.
        raise ValueError(f"aligned augmentation needs one image size for every modality, got {sizes}")
    first = next(iter(images.values()))
    b, dev = first.shape[0], first.device
    dy = dx = None
    if shift > 0:
        dy = torch.randint(0, 2 * shift + 1, (b,), device=dev, generator=gen)
        dx = torch.randint(0, 2 * shift + 1, (b,), device=dev, generator=gen)
    mirror = torch.rand(b, device=dev, generator=gen) < 0.5 if flip else None
    return {name: _geometry(x, shift, dy, dx, mirror) for name, x in images.items()}


def _geometry(
    x: torch.Tensor, shift: int, dy: torch.Tensor | None, dx: torch.Tensor | None, mirror: torch.Tensor | None
) -> torch.Tensor:
    b, _, h, w = x.shape
    dev = x.device
    if dy is not None and dx is not None:
        padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))
        rows = torch.arange(h, device=dev)[None, :] + dy[:, None]
        cols = torch.arange(w, device=dev)[None, :] + dx[:, None]
        bi = torch.arange(b, device=dev)[:, None, None]
        # Advanced indexing puts the indexed dims first: (b,h,w,c) -> (b,c,h,w).
        x = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if mirror is not None:
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def modality_dropout(
    present: dict[str, torch.Tensor], optional: list[str], p: float, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """Drop each optional modality of each sample with probability ``p``, so the model learns to
    work without it. A sample that would be left with nothing keeps what it had: with a required
    modality that never happens; with only optional ones, the empty set is the one subset that
    cannot occur."""
    unknown = [name for name in optional if name not in present]
    if unknown:
        raise ValueError(f"modality dropout: no modality {', '.join(unknown)} (have {', '.join(present)})")
    kept = {}
    for name, mask in present.items():
        if name in optional:
            mask = mask & (torch.rand(mask.shape, device=mask.device, generator=gen) >= p)
        kept[name] = mask
    left = torch.stack(list(kept.values())).any(0)
    return {name: torch.where(left, mask, present[name]) for name, mask in kept.items()}


def make_batch(
    images: dict[str, torch.Tensor],
    present: dict[str, torch.Tensor],
    labels: torch.Tensor,
    index: torch.Tensor,
    normalizer: MultiNormalizer,
    gen: torch.Generator | None,
    flip: bool,
    shift: int,
    dropout_p: float,
    optional: list[str],
) -> dict[str, torch.Tensor]:
    """Gathered images -> the batch contract: augment, normalise, drop out, zero-fill.

    The fill is applied after normalisation: a missing image is exactly zero where the model
    looks, whatever the modality's mean, and a dropped one is indistinguishable from a missing one.
    """
    if (flip or shift > 0 or dropout_p > 0) and gen is None:
        raise ValueError("augmentation or modality dropout needs a generator")
    if flip or shift > 0:
        images = augment_aligned(images, gen, flip, shift)
    if dropout_p > 0:
        present = modality_dropout(present, optional, dropout_p, gen)
    batch = {}
    for name, x in normalizer(images).items():
        batch[name] = torch.where(present[name][:, None, None, None], x, 0.0)
    for name in optional:
        batch[f"{name}_present"] = present[name].float()
    batch["label"] = labels
    batch["index"] = index
    return batch


def epoch_rows(
    data: MultiTensorData,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """The row numbers of each shuffled batch of one epoch, in ``tensors.epoch_batches``' order."""
    # The row numbers stand in for the images, so the permutation and DDP sharding are
    # epoch_batches' own rather than a second copy of them.
    rows = TensorData(torch.arange(len(data), device=data.labels.device), data.labels)
    for index, _ in epoch_batches(rows, batch_size, seed, epoch, rank, world, drop_last):
        yield index
