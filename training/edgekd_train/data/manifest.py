"""Multimodal manifests: how paired data (ours or a user's) is described.

A CSV file, one row per sample: ``id,label`` and then one column per modality, named freely
(``rgb``, ``height``, ``thermal``...). A cell holds the path of that sample's image for that
modality, relative to the manifest's folder so the set can be moved as one folder; an empty cell
means the modality is missing for that sample (a sensor that was down), which training must
learn to live with rather than the reader refuse.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .resample import SIXTEEN_BIT_MODES

KEY_COLUMNS = ("id", "label")


class ManifestError(ValueError):
    """A malformed manifest; the message names the file, the line and the column."""


@dataclass(frozen=True)
class Record:
    id: str
    label: str
    paths: dict[str, Path | None]  # modality -> image file, None where missing


@dataclass(frozen=True)
class Manifest:
    path: Path
    modalities: tuple[str, ...]
    records: tuple[Record, ...]


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    try:
        # utf-8-sig: a manifest saved from a spreadsheet starts with a byte-order mark.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            # The reader's own line count: a quoted cell may span lines, so rows are not lines.
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path}: cannot read manifest: {e}") from None
    if not rows:
        raise ManifestError(f"{path}: empty file (expected a header line id,label,<modality>...)")
    modalities = _modalities(path, rows[0][1])
    records: list[Record] = []
    first_line: dict[str, int] = {}
    for line, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue  # a blank line, often the last one
        record = _record(path, line, row, modalities)
        if record.id in first_line:
            raise ManifestError(f"{path}:{line}: column id: {record.id!r} already used on line {first_line[record.id]}")
        first_line[record.id] = line
        records.append(record)
    if not records:
        raise ManifestError(f"{path}: no samples after the header")
    return Manifest(path, modalities, tuple(records))


def _modalities(path: Path, header: list[str]) -> tuple[str, ...]:
    names = [h.strip() for h in header]
    if tuple(names[:2]) != KEY_COLUMNS:
        raise ManifestError(f"{path}:1: the header must start with id,label (found {','.join(names[:2]) or 'nothing'})")
    modalities = names[2:]
    if not modalities:
        raise ManifestError(f"{path}:1: no modality columns after id,label (e.g. id,label,rgb,height)")
    for k, name in enumerate(modalities, start=3):
        if not name:
            raise ManifestError(f"{path}:1: column {k} has no name")
        if name in KEY_COLUMNS or modalities.index(name) != k - 3:
            raise ManifestError(f"{path}:1: column {name!r} appears twice")
    return tuple(modalities)


def _record(path: Path, line: int, row: list[str], modalities: tuple[str, ...]) -> Record:
    width = len(KEY_COLUMNS) + len(modalities)
    if len(row) != width:
        raise ManifestError(f"{path}:{line}: {len(row)} cells, the header has {width}")
    sample_id, label = row[0].strip(), row[1].strip()
    if not sample_id:
        raise ManifestError(f"{path}:{line}: column id is empty")
    if not label:
        raise ManifestError(f"{path}:{line}: column label is empty")
    paths: dict[str, Path | None] = {}
    for name, cell in zip(modalities, row[2:], strict=True):
        cell = cell.strip()
        if not cell:
            paths[name] = None
            continue
        file = path.parent / cell
        if not file.is_file():
            raise ManifestError(f"{path}:{line}: column {name}: no such file {cell} (looked for {file})")
        paths[name] = file
    if all(p is None for p in paths.values()):
        raise ManifestError(f"{path}:{line}: every modality is empty; a sample needs at least one")
    return Record(sample_id, label, paths)


def write_manifest(path: Path, modalities: tuple[str, ...], rows: Iterable[tuple[str, str, list[str]]]) -> None:
    """Write ``(id, label, [relative path per modality, "" where missing])`` rows; ``\\n`` line
    ends on every platform, so a generated set is byte-identical everywhere."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*KEY_COLUMNS, *modalities])
        for sample_id, label, cells in rows:
            w.writerow([sample_id, label, *cells])


def load_images(record: Record) -> dict[str, np.ndarray | None]:
    """The record's images as stored: 16-bit grey as uint16 (H, W), 8-bit grey as uint8 (H, W),
    anything in colour as uint8 RGB (H, W, 3); None for a missing modality."""
    from PIL import Image, UnidentifiedImageError

    images: dict[str, np.ndarray | None] = {}
    for name, file in record.paths.items():
        if file is None:
            images[name] = None
            continue
        try:
            with Image.open(file) as im:
                if im.mode in SIXTEEN_BIT_MODES:
                    images[name] = np.asarray(im).astype(np.uint16)
                elif im.mode == "L":
                    images[name] = np.asarray(im)
                else:
                    images[name] = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise ManifestError(f"{file}: cannot read the {name} image of sample {record.id!r}: {e}") from None
    return images
