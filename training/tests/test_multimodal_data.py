"""Multimodal training data: a manifest loaded onto the device, aligned augmentation, modality
dropout and the batch contract the models and distillers consume."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd_train.data.feed import Feed
from edgekd_train.data.inspection import CLASSES, write_set
from edgekd_train.data.manifest import ManifestError, write_manifest
from edgekd_train.data.multimodal import (
    ModalitySpec,
    MultiNormalizer,
    augment_aligned,
    epoch_rows,
    load_manifest_data,
    make_batch,
    modality_dropout,
    modality_stats,
)
from edgekd_train.data.tensors import augment

N, SIZE = 20, 32
RGB = ModalitySpec("rgb", 3, (SIZE, SIZE))
HEIGHT = ModalitySpec("height", 1, (SIZE, SIZE), optional=True)


@pytest.fixture
def inspection(tmp_path) -> Path:
    write_set(tmp_path, N, seed=3, size=SIZE, progress=lambda done: None)
    return tmp_path / "manifest.csv"


def _blank_height(manifest: Path, rows: set[int]) -> None:
    """Empty the height cell of these data rows (0-based), as a sensor that was down would."""
    lines = manifest.read_text().splitlines()
    for r in rows:
        lines[r + 1] = lines[r + 1].rsplit(",", 1)[0] + ","
    manifest.write_text("\n".join(lines) + "\n")


def test_the_inspection_set_loads_with_each_modality_at_its_size(inspection):
    data = load_manifest_data(inspection, [RGB, ModalitySpec("height", 1, (16, 16), optional=True)], list(CLASSES))
    assert len(data) == N and data.labels.dtype == torch.int64
    assert sorted(data.labels.tolist()) == sorted(list(range(len(CLASSES))) * (N // len(CLASSES)))
    assert data.images["rgb"].shape == (N, 3, SIZE, SIZE) and data.images["rgb"].dtype == torch.uint8
    # The 16-bit height map keeps its precision: float32 on the 0..255 scale.
    assert data.images["height"].shape == (N, 1, 16, 16) and data.images["height"].dtype == torch.float32
    assert all(m.dtype == torch.bool and bool(m.all()) for m in data.present.values())
    moved = data.to("cpu")
    assert len(moved) == N and set(moved.images) == {"rgb", "height"}


def test_one_height_count_survives_loading(tmp_path):
    for k, count in enumerate((40000, 40001)):
        Image.fromarray(np.full((8, 8), count, dtype=np.uint16)).save(tmp_path / f"h{k}.png")
    write_manifest(tmp_path / "m.csv", ("height",), [("a", "ok", ["h0.png"]), ("b", "ok", ["h1.png"])])
    data = load_manifest_data(tmp_path / "m.csv", [ModalitySpec("height", 1, (8, 8))], ["ok"])
    h = data.images["height"]
    assert float(h[0].max()) == pytest.approx(40000 / 257) and float(h[1].min()) == pytest.approx(40001 / 257)
    assert float(h[1].min() - h[0].max()) > 0  # uint8 would have made them one level


def test_a_missing_optional_cell_is_zeros_and_not_present(inspection):
    _blank_height(inspection, {4})
    data = load_manifest_data(inspection, [RGB, HEIGHT], list(CLASSES))
    assert data.present["height"].tolist() == [i != 4 for i in range(N)]
    assert not data.images["height"][4].any() and data.images["height"][3].any()


def test_a_missing_required_cell_names_the_file_the_sample_and_the_column(inspection):
    _blank_height(inspection, {4})
    with pytest.raises(ManifestError, match=rf"{inspection}: sample '000004': column height: empty"):
        load_manifest_data(inspection, [RGB, ModalitySpec("height", 1, (SIZE, SIZE))], list(CLASSES))


def test_unknown_labels_and_columns_are_refused(inspection):
    with pytest.raises(ManifestError, match=r"column label: '\w+' is not a class"):
        load_manifest_data(inspection, [RGB], ["ok"])
    with pytest.raises(ManifestError, match=r"no column thermal \(the manifest has rgb, height\)"):
        load_manifest_data(inspection, [RGB, ModalitySpec("thermal", 1, (SIZE, SIZE))], list(CLASSES))


def test_stats_ignore_missing_samples(inspection):
    _blank_height(inspection, set(range(0, N, 2)))
    data = load_manifest_data(inspection, [RGB, HEIGHT], list(CLASSES))
    stats = modality_stats(data)
    present = data.images["height"][data.present["height"]].double() / 255
    assert stats["height"][0] == (round(float(present.mean()), 4),)
    # Mid-range heights: counted, the zero stand-ins would halve the mean.
    assert stats["height"][0][0] == pytest.approx(0.5, abs=0.05)
    assert len(stats["rgb"][0]) == 3 and len(stats["rgb"][1]) == 3


def test_every_modality_gets_the_same_flip_and_shift(inspection):
    rgb = load_manifest_data(inspection, [RGB], list(CLASSES)).images["rgb"]
    out = augment_aligned({"rgb": rgb, "copy": rgb.clone()}, torch.Generator().manual_seed(1), flip=True, shift=4)
    assert torch.equal(out["rgb"], out["copy"]) and not torch.equal(out["rgb"], rgb)
    # Alone, a modality is augmented exactly as the unimodal path does it.
    alone = augment(rgb, torch.Generator().manual_seed(1), flip=True, shift=4)
    assert torch.equal(out["rgb"], alone)
    with pytest.raises(ValueError, match="one image size"):
        augment_aligned({"rgb": rgb, "small": rgb[:, :, :16, :16]}, torch.Generator(), flip=True, shift=2)


def test_dropout_reaches_every_subset_of_optional_modalities_and_never_a_required_one():
    b = 400
    present = {name: torch.ones(b, dtype=torch.bool) for name in ("rgb", "height", "thermal")}
    kept = modality_dropout(present, ["height", "thermal"], 0.5, torch.Generator().manual_seed(0))
    assert bool(kept["rgb"].all())
    subsets = {(bool(h), bool(t)) for h, t in zip(kept["height"], kept["thermal"], strict=True)}
    assert subsets == {(False, False), (False, True), (True, False), (True, True)}

    # With every modality optional, each sample keeps at least one.
    kept = modality_dropout(present, ["rgb", "height", "thermal"], 0.7, torch.Generator().manual_seed(0))
    rows = torch.stack([kept[n] for n in ("rgb", "height", "thermal")], 1)
    assert bool(rows.any(1).all())
    assert len({tuple(r.tolist()) for r in rows}) == 7  # the 2^3 subsets less the empty one


def test_dropout_never_brings_back_a_missing_modality():
    present = {"rgb": torch.ones(50, dtype=torch.bool), "height": torch.arange(50) % 2 == 0}
    kept = modality_dropout(present, ["height"], 0.5, torch.Generator().manual_seed(0))
    assert not bool((kept["height"] & ~present["height"]).any())


def test_batches_follow_the_contract(inspection):
    _blank_height(inspection, {1, 2})
    data = load_manifest_data(inspection, [RGB, HEIGHT], list(CLASSES))
    norm = MultiNormalizer.from_stats(modality_stats(data))
    feed = Feed(norm, ("height",), dropout_p=0.3, flip=True, shift=2)
    gen = torch.Generator().manual_seed(0)
    batches = [feed.train_batch(data, index, gen) for index in epoch_rows(data, 8, seed=0, epoch=0)]
    assert [len(b["label"]) for b in batches] == [8, 8, 4]
    for b in batches:
        assert set(b) == {"rgb", "height", "height_present", "label", "index"}
        assert b["rgb"].dtype == b["height"].dtype == b["height_present"].dtype == torch.float32
        assert b["label"].dtype == b["index"].dtype == torch.int64
        assert b["rgb"].shape[1:] == (3, SIZE, SIZE) and b["height"].shape[1:] == (1, SIZE, SIZE)
        assert torch.equal(b["label"], data.labels[b["index"]])
        missing = b["height_present"] == 0
        assert not bool(b["height"][missing].any()) and bool(b["height"][~missing].any(dim=(1, 2, 3)).all())
        assert not bool((b["height_present"].bool() & ~data.present["height"][b["index"]]).any())
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(N))


def test_an_evaluation_batch_makes_the_chosen_inputs_missing(inspection):
    _blank_height(inspection, {1})
    data = load_manifest_data(inspection, [RGB, HEIGHT], list(CLASSES))
    feed = Feed(MultiNormalizer.from_stats(modality_stats(data)), ("height",))
    index = torch.tensor([0, 1, 2])
    as_is = feed.eval_batch(data, index)
    assert as_is["height_present"].tolist() == [1.0, 0.0, 1.0]
    without = feed.eval_batch(data, index, missing=["height"])
    assert without["height_present"].tolist() == [0.0, 0.0, 0.0] and not bool(without["height"].any())
    assert torch.equal(without["rgb"], as_is["rgb"])


def test_without_augmentation_a_batch_is_the_normalised_data(inspection):
    data = load_manifest_data(inspection, [RGB, HEIGHT], list(CLASSES))
    norm = MultiNormalizer.from_stats(modality_stats(data))
    index = torch.tensor([3, 0])
    imgs = {k: v[index] for k, v in data.images.items()}
    pres = {k: v[index] for k, v in data.present.items()}
    b = make_batch(imgs, pres, data.labels[index], index, norm, None, False, 0, 0.0, ["height"])
    assert torch.equal(b["height"], norm.by_modality["height"](data.images["height"][index]))
    assert b["height_present"].tolist() == [1.0, 1.0]
