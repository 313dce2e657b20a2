"""The synthetic inspection set and multimodal manifests: determinism, files, errors, and the
physics that makes each modality matter."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekd_train.data.inspection import CLASSES, HEIGHT_ZERO, generate
from edgekd_train.data.manifest import ManifestError, load_images, read_manifest


def test_a_sample_depends_on_seed_and_index_only():
    a, b = generate(7, 12), generate(7, 12)
    assert a.label == b.label and np.array_equal(a.rgb, b.rgb) and np.array_equal(a.height, b.height)
    other = generate(8, 12)
    assert not np.array_equal(a.rgb, other.rgb) and not np.array_equal(a.height, other.height)
    # Every block of five holds each class once, so any N is balanced to within one per class.
    labels = [generate(7, i).label for i in range(20)]
    for block in range(4):
        assert sorted(labels[5 * block : 5 * block + 5]) == sorted(CLASSES)


@pytest.mark.parametrize("size", [64, 40])
def test_shapes_and_dtypes(size):
    s = generate(0, 3, size)
    assert s.rgb.shape == (size, size, 3) and s.rgb.dtype == np.uint8
    assert s.height.shape == (size, size) and s.height.dtype == np.uint16
    # A flat-ish part sits around mid-range, far from both ends of the 16-bit scale.
    assert abs(float(np.median(s.height)) - HEIGHT_ZERO) < 3000


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _generate(cli, out: Path, n: int):
    return cli(["data", "inspection", "--out", str(out), "--n", str(n), "--seed", "3", "--size", "32"])


def test_cli_writes_the_set_the_same_way_every_time(tmp_path, cli):
    r, evs = _generate(cli, tmp_path / "a", 10)
    assert r.returncode == 0, r.stderr
    assert evs[0]["event"] == "start" and evs[-1]["event"] == "summary"
    assert evs[-1]["counts"] == dict.fromkeys(CLASSES, 2) and evs[-1]["synthetic"] is True
    assert [e["done"] for e in evs if e["event"] == "progress"][-1] == 10
    assert _generate(cli, tmp_path / "b", 10)[0].returncode == 0
    assert _generate(cli, tmp_path / "c", 4)[0].returncode == 0
    a, b, c = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert len(a) == 21 and a == b
    # A smaller N gives the first samples of a larger one, file for file.
    assert all(c[k] == a[k] for k in c if k != "manifest.csv") and len(c) == 9

    m = read_manifest(tmp_path / "a" / "manifest.csv")
    assert (tmp_path / "a" / "manifest.csv").read_text().splitlines()[0] == "id,label,rgb,height"
    assert m.modalities == ("rgb", "height") and len(m.records) == 10
    first = m.records[0]
    assert first.paths["rgb"] == tmp_path / "a" / "rgb" / "000000.png"
    images = load_images(first)
    sample = generate(3, 0, 32)
    assert first.label == sample.label
    assert images["rgb"].dtype == np.uint8 and np.array_equal(images["rgb"], sample.rgb)
    assert images["height"].dtype == np.uint16 and np.array_equal(images["height"], sample.height)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--n", "0"], "--n must be at least 1"),
        (["--n", "-3"], "--n must be at least 1"),
        (["--n", "five"], "invalid int value"),
        (["--n", "5", "--size", "8"], "--size must be at least 16"),
        (["--seed", "1"], "required: --n"),
    ],
)
def test_cli_refuses_bad_arguments(tmp_path, cli, args, message):
    r, evs = cli(["data", "inspection", "--out", str(tmp_path / "o"), *args])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (ev,) = [e for e in evs if e["event"] == "error"]
    assert ev["kind"] == "config" and message in ev["message"]
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_non_empty_folder_unless_forced(tmp_path, cli):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r, evs = cli(["data", "inspection", "--out", str(out), "--n", "2"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not empty" in evs[-1]["message"] and "--force" in evs[-1]["message"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    r, _ = cli(["data", "inspection", "--out", str(out), "--n", "2", "--force"])
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.csv").is_file() and (out / "notes.txt").read_text() == "mine"


def _manifest(tmp_path: Path, text: str) -> Path:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


def test_manifest_any_modalities_and_missing_cells(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.png").write_bytes(b"")
    path = _manifest(tmp_path, "id,label,camera,thermal\nx1,ok,a.png,sub/t.png\nx2,bad,,b.png\n\n")
    Image.fromarray(np.full((5, 7), 9, dtype=np.uint8)).save(tmp_path / "b.png")
    m = read_manifest(path)
    assert m.modalities == ("camera", "thermal")
    assert m.records[0].paths == {"camera": tmp_path / "a.png", "thermal": tmp_path / "sub" / "t.png"}
    assert m.records[1].label == "bad" and m.records[1].paths["camera"] is None
    images = load_images(m.records[1])
    assert images["camera"] is None and images["thermal"].dtype == np.uint8 and images["thermal"].shape == (5, 7)


@pytest.mark.parametrize(
    "text,where",
    [
        ("", ": empty file"),
        ("name,label,rgb\nx,ok,a.png\n", ":1: the header must start with id,label"),
        ("id,label\nx,ok\n", ":1: no modality columns"),
        ("id,label,rgb,rgb\nx,ok,a.png,b.png\n", ":1: column 'rgb' appears twice"),
        ("id,label,rgb\n", ": no samples"),
        ("id,label,rgb\nx,ok,a.png\ny,ok\n", ":3: 2 cells, the header has 3"),
        ("id,label,rgb\nx,ok,a.png\nx,ok,b.png\n", ":3: column id: 'x' already used on line 2"),
        ('id,label,rgb\n"x\ny",ok,a.png\nx,,a.png\n', ":4: column label is empty"),  # a quoted id spans lines 2-3
        ("id,label,rgb\n,ok,a.png\n", ":2: column id is empty"),
        ("id,label,rgb\nx, ,a.png\n", ":2: column label is empty"),
        ("id,label,rgb,height\nx,ok,a.png,nope.png\n", ":2: column height: no such file nope.png"),
        ("id,label,rgb,height\nx,ok,,\n", ":2: every modality is empty"),
    ],
)
def test_manifest_errors_name_file_line_and_column(tmp_path, text, where):
    path = _manifest(tmp_path, text)
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    assert str(e.value).startswith(f"{path}{where}")


def test_an_unreadable_image_names_the_file(tmp_path):
    m = read_manifest(_manifest(tmp_path, "id,label,rgb\nx,ok,a.png\n"))
    with pytest.raises(ManifestError, match=r"a\.png: cannot read the rgb image of sample 'x'"):
        load_images(m.records[0])


# The physics test. The same generic statistics are computed for every channel of either
# modality (none is chosen for a particular defect or modality): spread of the image after
# removing its best-fit plane (tilt, light fall-off), and the spread and peak of its coarse
# (4x4-block) and fine parts. A linear classifier on them then says what each modality can see.


def _channel_statistics(c: np.ndarray) -> np.ndarray:
    n = c.shape[0]
    yy, xx = np.mgrid[0:n, 0:n]
    design = np.stack([np.ones(n * n), xx.ravel(), yy.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, c.ravel(), rcond=None)
    r = c - (design @ coef).reshape(n, n)
    coarse = r.reshape(n // 4, 4, n // 4, 4).mean(axis=(1, 3))
    fine = r - np.kron(coarse, np.ones((4, 4)))
    return np.log([r.std(), coarse.std(), np.abs(coarse).max(), fine.std(), np.abs(fine).max()])


def _statistics(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float64)
    channels = image[:, :, None] if image.ndim == 2 else image
    return np.concatenate([_channel_statistics(channels[:, :, k]) for k in range(channels.shape[2])])


def _held_out_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Logistic regression by gradient descent on the first half, accuracy on the second."""
    half = len(y) // 2
    mu, sd = x[:half].mean(axis=0), x[:half].std(axis=0) + 1e-9
    x = (x - mu) / sd
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(500):
        p = 1.0 / (1.0 + np.exp(-(x[:half] @ w + b)))
        w -= 0.5 * (x[:half].T @ (p - y[:half]) / half + 1e-3 * w)
        b -= 0.5 * float(np.mean(p - y[:half]))
    return float(np.mean(((x[half:] @ w + b) > 0) == (y[half:] == 1)))


@pytest.mark.parametrize("seed", [0, 1])
def test_each_modality_sees_what_its_physics_lets_it_see(seed):
    samples = [generate(seed, i) for i in range(400)]  # 80 per class: 80 of ok vs X held out
    labels = np.array([s.label for s in samples])
    stats = {m: np.array([_statistics(getattr(s, m)) for s in samples]) for m in ("rgb", "height")}
    accuracy = {}
    for defect in ("dent", "stain", "scratch", "crack"):
        pick = (labels == "ok") | (labels == defect)
        for modality, x in stats.items():
            accuracy[defect, modality] = _held_out_accuracy(x[pick], (labels[pick] == defect).astype(float))
    # A dent changes shape, not material: the profilometer sees it, the camera under diffuse light
    # does not. A stain is the reverse. Scratches and cracks cut the surface and tear the material.
    # The defects are faint (a linear probe of global statistics gets 0.75-0.95 where it can see
    # them), so students have room to differ; the blind modality stays at chance.
    assert accuracy["dent", "height"] >= 0.8 and accuracy["dent", "rgb"] <= 0.65, accuracy
    assert accuracy["stain", "rgb"] >= 0.8 and accuracy["stain", "height"] <= 0.65, accuracy
    for defect in ("scratch", "crack"):
        assert min(accuracy[defect, "rgb"], accuracy[defect, "height"]) >= 0.7, accuracy
