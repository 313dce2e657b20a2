"""Device-resident tensor dataset, batch iterator and augmentation.

The whole data set is one uint8 tensor (N,C,H,W) on the training device: on CUDA it lives in GPU
memory and batches are gathered, augmented and normalised there (no DataLoader workers, no
host->device copies per step); on CPU the same code runs on CPU tensors.

Normalisation is ``(pixel * scale - mean) / std`` in float32, the exact formula of the card, so
the exported student sees at inference what it saw in training.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

SCALE = 1.0 / 255.0


@dataclass
class TensorData:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device) -> TensorData:
        return TensorData(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Normalizer:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = SCALE

    def __call__(self, u8: torch.Tensor) -> torch.Tensor:
        c = u8.shape[1]
        mean = torch.tensor(self.mean, dtype=torch.float32, device=u8.device).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=u8.device).view(1, c, 1, 1)
        return (u8.float() * torch.tensor(self.scale, dtype=torch.float32) - mean) / std


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of ``pixel * scale``, rounded to 4 decimals (what the card records)."""
    x = images.double() * SCALE
    dims = (0, 2, 3)
    return (tuple(round(float(v), 4) for v in x.mean(dims)), tuple(round(float(v), 4) for v in x.std(dims)))


def augment(u8: torch.Tensor, gen: torch.Generator, flip: bool, shift: int) -> torch.Tensor:
    """Random horizontal flip and random translation by up to ``shift`` pixels (zero padding),
    per sample, in one gather, on whatever device ``u8`` is on."""
    b, c, h, w = u8.shape
    dev = u8.device
    if shift > 0:
        padded = torch.nn.functional.pad(u8, (shift, shift, shift, shift))
        dy = torch.randint(0, 2 * shift + 1, (b,), device=dev, generator=gen)
        dx = torch.randint(0, 2 * shift + 1, (b,), device=dev, generator=gen)
        rows = torch.arange(h, device=dev)[None, :] + dy[:, None]  # (b,h)
        cols = torch.arange(w, device=dev)[None, :] + dx[:, None]  # (b,w)
        bi = torch.arange(b, device=dev)[:, None, None]
        # Advanced indexing puts the indexed dims first: (b,h,w,c) -> (b,c,h,w).
        u8 = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        m = torch.rand(b, device=dev, generator=gen) < 0.5
        u8 = torch.where(m[:, None, None, None], u8.flip(3), u8)
    return u8.contiguous()


def epoch_batches(
    data: TensorData,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled (uint8 images, labels) batches for one epoch.

    The permutation depends only on (seed, epoch), so every DDP rank draws the same one and
    takes its own shard ``perm[rank::world]``, cut to equal length (DistributedSampler without
    padding: ranks must run the same number of steps or the all-reduce hangs).
    """
    dev = data.images.device
    g = torch.Generator(device="cpu").manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(len(data), generator=g)
    if world > 1:
        per = len(perm) // world
        perm = perm[rank::world][:per]
    perm = perm.to(dev)
    n = len(perm)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for s in range(0, stop, batch_size):
        idx = perm[s : s + batch_size]
        yield data.images[idx], data.labels[idx]


def steps_per_epoch(n: int, batch_size: int, world: int = 1, drop_last: bool = False) -> int:
    per = n // world if world > 1 else n
    if drop_last and per >= batch_size:
        return per // batch_size
    return (per + batch_size - 1) // batch_size
