"""The synthetic multimodal inspection set (design §4): a camera image and a height map of one
machined metal patch, classes ``ok, scratch, dent, stain, crack``.

It exists to exercise multimodal teachers, unimodal students and missing modalities; its numbers
are synthetic and say nothing about real parts.

The two modalities see different physics, so each one matters:

- The camera sees albedo x illumination. The light is diffuse (a dome): the irradiance does not
  depend on the surface slope, so a shape change with no change of material is invisible in RGB.
- The profilometer sees height only, not colour.

Hence a stain (a change of material) shows only in RGB, a dent (a change of shape) only in
height, and a scratch or crack (both: material is torn and the surface cut) in both.

Everything is drawn from ``numpy.random.Generator`` objects seeded from ``(seed, i)``: sample i is
the same whatever N is, and there is no global random state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import write_manifest

CLASSES = ("ok", "scratch", "dent", "stain", "crack")
MODALITIES = ("rgb", "height")  # the manifest's columns, in this order
MIN_SIZE = 16  # below it a crack or a dent no longer fits in the patch

# The height map's fixed scale, as a profilometer's: 0.01 µm per count around mid-range, so one
# count means the same height in every sample and every data set.
HEIGHT_ZERO = 32768
HEIGHT_COUNTS_PER_UM = 100.0


@dataclass(frozen=True)
class Sample:
    label: str
    rgb: np.ndarray  # (H, W, 3) uint8
    height: np.ndarray  # (H, W) uint16, HEIGHT_ZERO + HEIGHT_COUNTS_PER_UM * µm


def label_of(seed: int, i: int) -> str:
    """Balanced without knowing N: every block of five consecutive samples holds each class once,
    in an order drawn per block."""
    block, k = divmod(i, len(CLASSES))
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, block))).permutation(len(CLASSES))
    return CLASSES[int(order[k])]


def generate(seed: int, i: int, size: int = 64) -> Sample:
    """Sample i of the set with this seed."""
    if size < MIN_SIZE:
        raise ValueError(f"size {size} is too small (at least {MIN_SIZE} pixels)")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, i)))
    label = label_of(seed, i)
    grid = _Grid.square(size)
    height = _surface_height(rng, grid)
    albedo = _metal_albedo(rng, grid)
    if label == "stain":
        albedo *= _stain(rng, grid)
    elif label == "dent":
        height -= _dent(rng, grid)
    elif label == "scratch":
        profile = _line_profile(grid, _straight_path(rng, grid), width=rng.uniform(0.6, 1.0) * grid.unit)
        height -= rng.uniform(0.4, 1.5) * profile
        # Torn-up burr or polished-in groove: the line is brighter or darker than the metal.
        albedo *= (1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.3) * profile)[:, :, None]
    elif label == "crack":
        profile = _line_profile(grid, _jagged_paths(rng, grid), width=rng.uniform(0.5, 0.7) * grid.unit)
        height -= rng.uniform(1.5, 5.0) * profile
        # A crack is a gap: it traps the light and is dark in every channel.
        albedo *= (1.0 - rng.uniform(0.15, 0.4) * profile)[:, :, None]
    return Sample(label, _camera(rng, grid, albedo), _profilometer(rng, height))


@dataclass(frozen=True)
class _Grid:
    """Pixel coordinates, and the length of one pixel of the 64-pixel reference patch, so
    features keep their physical size at any resolution."""

    y: np.ndarray
    x: np.ndarray
    size: int
    unit: float

    @classmethod
    def square(cls, size: int) -> _Grid:
        y, x = np.mgrid[0:size, 0:size].astype(np.float64)
        return cls(y, x, size, size / 64.0)


def _smooth_noise(rng: np.random.Generator, grid: _Grid, sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian noise low-passed to a correlation length of ``sigma_px``: the
    grain of a material, and the unevenness of everything that is not a defect."""
    n = grid.size
    white = rng.standard_normal((n, n))
    f = np.fft.fftfreq(n)
    kernel = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    field = np.fft.ifft2(np.fft.fft2(white) * kernel).real
    return field / (field.std() + 1e-12)


def _surface_height(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """Height in µm of a defect-free patch: a part that does not lie flat in the fixture (tilt),
    the feed marks of the cutting tool (parallel ridges), and fine roughness."""
    n = grid.size
    tilt = rng.uniform(-10.0, 10.0, size=2) / n
    theta = rng.uniform(0.0, np.pi)
    period = rng.uniform(4.0, 8.0) * grid.unit
    along = grid.x * np.cos(theta) + grid.y * np.sin(theta)
    marks = rng.uniform(0.2, 0.6) * np.sin(2.0 * np.pi * along / period + rng.uniform(0.0, 2.0 * np.pi))
    rough = rng.uniform(0.05, 0.2) * _smooth_noise(rng, grid, 1.0 * grid.unit)
    return tilt[0] * (grid.x - n / 2) + tilt[1] * (grid.y - n / 2) + marks + rough


def _metal_albedo(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """Reflectance (H, W, 3) of machined steel or aluminium: grey with a slight tint that varies
    by alloy and finish, and a faint grain. It is drawn independently of the height, as the
    material's colour is independent of its small-scale shape."""
    grey = rng.uniform(0.45, 0.7)
    tint = 1.0 + rng.normal(0.0, 0.03, size=3)
    grain = 1.0 + rng.uniform(0.01, 0.04) * _smooth_noise(rng, grid, 1.5 * grid.unit)
    return grey * tint[None, None, :] * grain[:, :, None]


def _blob(rng: np.random.Generator, grid: _Grid, sigma_px: tuple[float, float]) -> np.ndarray:
    """A smooth, elongated, randomly oriented bump of peak 1 somewhere inside the patch."""
    n = grid.size
    cy, cx = rng.uniform(0.25 * n, 0.75 * n, size=2)
    sa, sb = rng.uniform(*sigma_px, size=2) * grid.unit
    phi = rng.uniform(0.0, np.pi)
    u = (grid.x - cx) * np.cos(phi) + (grid.y - cy) * np.sin(phi)
    v = -(grid.x - cx) * np.sin(phi) + (grid.y - cy) * np.cos(phi)
    return np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))


def _stain(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """Albedo factor (H, W, 3) of coolant residue or rust: a film that absorbs blue more than red
    (brownish and darker), with a ragged edge. A film microns thin adds no measurable height."""
    edge = np.clip(_blob(rng, grid, (5.0, 12.0)) * (1.0 + 0.3 * _smooth_noise(rng, grid, 2.0 * grid.unit)), 0.0, 1.0)
    absorb = rng.uniform(0.15, 0.45) * np.array([0.25, 0.4, 0.55]) * (1.0 + rng.normal(0.0, 0.1, size=3))
    return 1.0 - edge[:, :, None] * absorb[None, None, :]


def _dent(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """Depth in µm of an impact dent: a smooth depression; the material and its colour are
    unchanged, so under diffuse light the camera cannot see it."""
    return rng.uniform(0.8, 2.5) * _blob(rng, grid, (4.0, 9.0))


def _straight_path(rng: np.random.Generator, grid: _Grid) -> list[np.ndarray]:
    """A scratch: one straight stroke of a sharp edge dragged across the part."""
    n = grid.size
    centre = rng.uniform(0.3 * n, 0.7 * n, size=2)
    phi = rng.uniform(0.0, np.pi)
    half = rng.uniform(0.2, 0.45) * n * np.array([np.cos(phi), np.sin(phi)])
    return [np.stack([centre - half, centre + half])]


def _random_walk(rng: np.random.Generator, start: np.ndarray, phi: float, steps: int, step: float) -> np.ndarray:
    points = [start]
    for _ in range(steps):
        phi += rng.normal(0.0, 0.45)
        points.append(points[-1] + step * np.array([np.cos(phi), np.sin(phi)]))
    return np.stack(points)


def _jagged_paths(rng: np.random.Generator, grid: _Grid) -> list[np.ndarray]:
    """A fatigue crack: it follows grain boundaries, so it zig-zags, and it forks."""
    n = grid.size
    phi = rng.uniform(0.0, 2.0 * np.pi)
    main = _random_walk(rng, rng.uniform(0.3 * n, 0.7 * n, size=2), phi, int(rng.integers(10, 16)), 2.5 * grid.unit)
    fork_at = main[int(rng.integers(2, len(main) - 2))]
    fork = _random_walk(rng, fork_at, phi + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2), 5, 2.5 * grid.unit)
    return [main, fork]


def _line_profile(grid: _Grid, paths: list[np.ndarray], width: float) -> np.ndarray:
    """Peak-1 cross-section of a thin line along polylines of (y, x) points: Gaussian in the
    distance to the nearest segment, so the line is antialiased rather than drawn in whole pixels."""
    d2 = np.full(grid.x.shape, np.inf)
    for path in paths:
        for (ay, ax), (by, bx) in zip(path[:-1], path[1:], strict=True):
            dy, dx = by - ay, bx - ax
            t = np.clip(((grid.y - ay) * dy + (grid.x - ax) * dx) / max(dy * dy + dx * dx, 1e-12), 0.0, 1.0)
            d2 = np.minimum(d2, (grid.y - ay - t * dy) ** 2 + (grid.x - ax - t * dx) ** 2)
    return np.exp(-0.5 * d2 / width**2)


def _camera(rng: np.random.Generator, grid: _Grid, albedo: np.ndarray) -> np.ndarray:
    """8-bit RGB of the patch under a diffuse dome light: the exposure and colour temperature
    change from part to part, the light falls off across the field, and the sensor adds noise.
    None of it depends on the height."""
    n = grid.size
    exposure = rng.uniform(0.7, 1.2)
    warm = rng.uniform(-0.08, 0.08)
    white = np.array([1.0 + warm, 1.0, 1.0 - warm])
    falloff = rng.uniform(-0.15, 0.15, size=2) / n
    light = exposure * (1.0 + falloff[0] * (grid.x - n / 2) + falloff[1] * (grid.y - n / 2))
    signal = albedo * light[:, :, None] * white[None, None, :]
    noisy = signal + rng.normal(0.0, rng.uniform(0.005, 0.02), size=signal.shape)
    return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)


def _profilometer(rng: np.random.Generator, height_um: np.ndarray) -> np.ndarray:
    """16-bit height map: the sensor's own noise, then quantised to the fixed scale."""
    noisy = height_um + rng.normal(0.0, rng.uniform(0.02, 0.08), size=height_um.shape)
    return np.clip(np.rint(HEIGHT_ZERO + HEIGHT_COUNTS_PER_UM * noisy), 0, 65535).astype(np.uint16)


def write_set(out: Path, n: int, seed: int, size: int, progress: Callable[[int], None]) -> dict[str, int]:
    """Samples 0..n-1 as ``out/rgb/<id>.png`` (8-bit RGB), ``out/height/<id>.png`` (16-bit grey)
    and ``out/manifest.csv``; ``progress(done)`` after each sample. Returns the count per class.
    PNG as Pillow writes it carries no time stamp, so the same arguments give the same bytes."""
    from PIL import Image

    for modality in MODALITIES:
        (out / modality).mkdir(parents=True, exist_ok=True)
    rows = []
    counts = dict.fromkeys(CLASSES, 0)
    for i in range(n):
        sample = generate(seed, i, size)
        sample_id = f"{i:06d}"
        cells = [f"{modality}/{sample_id}.png" for modality in MODALITIES]
        Image.fromarray(sample.rgb).save(out / cells[0])
        Image.fromarray(sample.height).save(out / cells[1])  # uint16 -> mode I;16, a 16-bit PNG
        rows.append((sample_id, sample.label, cells))
        counts[sample.label] += 1
        progress(i + 1)
    write_manifest(out / "manifest.csv", MODALITIES, rows)
    return counts
