"""`distill` on manifest data end to end, on a tiny synthetic inspection set: the camera-only
student distilled by EDAM + CRD from the camera + height teacher, and the missing-modality student
with its presence input and one calibration per subset. Each run takes a few seconds; the numbers
mean nothing, the files and their agreement with PyTorch do."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgekd_train.card import read_card
from edgekd_train.config import ConfigError, from_dict
from edgekd_train.data.inspection import write_set
from edgekd_train.export import parity_tolerance
from edgekd_train.pipeline import run_distill

SIZE = 16


class Emit:
    def __init__(self):
        self.events, self.enabled = [], True

    def __call__(self, ev):
        if self.enabled:
            self.events.append(ev)

    def open_copy(self, path):
        pass


@pytest.fixture(scope="module")
def inspection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspection")
    write_set(root / "train", 60, 0, 32, lambda _done: None)
    write_set(root / "test", 15, 1, 32, lambda _done: None)
    return root


def _config(root: Path, **sections) -> dict:
    raw = {
        "data": {
            "dataset": "manifest",
            "path": str(root / "train" / "manifest.csv"),
            "test_path": str(root / "test" / "manifest.csv"),
            "labels": ["ok", "scratch", "dent", "stain", "crack"],
            "image_size": SIZE,
            "calibration_split": 20,
        },
        "inputs": {"rgb": {"color": "rgb"}, "height": {"color": "gray", "optional": True}},
        "teacher": {"model": "mm-vit-teacher", "epochs": 1, "batch_size": 16, "schedule": "constant"},
        "student": {"epochs": 1, "batch_size": 16, "schedule": "constant"},
        "calibration": {"max_error_among_accepted": 0.5, "min_samples_per_class": 2},
        "export": {"reference_samples": 2},
        "run": {"device": "cpu", "threads": 1},
    }
    for name, table in sections.items():
        raw[name] = {**raw.get(name, {}), **table}
    return raw


def _distill(tmp_path: Path, raw: dict) -> tuple[dict, list[dict]]:
    cfg = from_dict(raw, "test.toml")
    emit = Emit()
    summary = run_distill(cfg, tmp_path, False, emit, "pytest")
    return summary, emit.events


def _onnx_inputs(path: Path) -> list[tuple[str, list[int]]]:
    m = onnx.load(str(path))
    return [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in m.graph.input]


def _ort_matches_references(onnx_path: Path, ref: Path, names: list[str], n: int) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for k in range(n):
        feeds = {
            name: np.load(ref / (f"input_{k}.npy" if len(names) == 1 else f"input_{k}.{name}.npy")) for name in names
        }
        got = sess.run(["logits"], feeds)[0]
        assert np.abs(got - np.load(ref / f"output_{k}.npy")).max() <= parity_tolerance()


def test_camera_only_student_by_edam_and_crd(tmp_path, inspection, scripts):
    raw = _config(
        inspection,
        student={"model": "vit-rgb-student", "inputs": ["rgb"]},
        distill={"method": "edam+crd"},
        crd={"feat_dim": 16, "k": 8},
    )
    summary, events = _distill(tmp_path, raw)
    # The named terms of both objectives reach the step and epoch events.
    epoch = next(e for e in events if e["event"] == "epoch" and e["phase"] == "student")
    assert set(epoch["losses"]) == {"ce", "attn", "crd", "kd"} and all(np.isfinite(list(epoch["losses"].values())))
    # The teacher is measured with the height map and with it made missing (zeros).
    assert set(summary["teacher"]["by_subset"]) == {"rgb+height", "rgb"}
    assert set(summary["student"]["by_subset"]) == {"rgb"}
    # The box has a camera only: one input, required, no presence input, no subsets.
    assert _onnx_inputs(tmp_path / "student.onnx") == [("rgb", [1, 3, SIZE, SIZE])]
    card = read_card(tmp_path / "student.onnx", validate=True)
    assert [(i["name"], i["color"], i["optional"]) for i in card["inputs"]] == [("rgb", "rgb", False)]
    assert "subsets" not in card["calibration"] and card["provenance"]["method"] == "edam+crd"
    # Nothing training-only in the graph: its weights are the student's (no teacher, no CRD heads).
    m = onnx.load(str(tmp_path / "student.onnx"))
    n_init = sum(numpy_helper.to_array(t).size for t in m.graph.initializer)
    assert abs(n_init - summary["student"]["params"]) <= 0.01 * summary["student"]["params"]
    assert summary["parity_max_abs_diff"] <= parity_tolerance()
    _ort_matches_references(tmp_path / "student.onnx", tmp_path / "reference", ["rgb"], 2)

    # The teacher exported beside it, for bench: both maps, zero-filled when height is missing.
    res = scripts("export_teacher").export(tmp_path, 2)
    assert res["max_abs_diff"] <= parity_tolerance()
    teacher = Path(res["onnx"])
    assert _onnx_inputs(teacher) == [("rgb", [1, 3, SIZE, SIZE]), ("height", [1, 1, SIZE, SIZE])]
    t_card = read_card(teacher, validate=True)
    assert t_card["calibration"] is None and t_card["missing_modality"]["policy"] == "zero-fill"
    _ort_matches_references(teacher, teacher.parent / "reference", ["rgb", "height"], 4)


def test_missing_modality_student_has_a_presence_input_and_a_calibration_per_subset(tmp_path, inspection):
    raw = _config(
        inspection,
        student={"model": "mm-vit-missing-student", "modality_dropout": 0.5},
        distill={"method": "kd"},
    )
    summary, _ = _distill(tmp_path, raw)
    onnx_path = tmp_path / "student.onnx"
    assert _onnx_inputs(onnx_path) == [
        ("rgb", [1, 3, SIZE, SIZE]),
        ("height", [1, 1, SIZE, SIZE]),
        ("height_present", [1]),
    ]
    card = read_card(onnx_path, validate=True)
    assert card["missing_modality"] == {"policy": "learned-token"}
    assert [(i["name"], i["color"], i["optional"]) for i in card["inputs"]] == [
        ("rgb", "rgb", False),
        ("height", "gray", True),
    ]
    (subset,) = card["calibration"]["subsets"]
    assert subset["present"] == ["rgb"] and subset["temperature"] > 0
    assert summary["subsets"][0]["present"] == ["rgb"]
    # Parity covers both subsets: 2 samples with the height map, then the same 2 without it.
    ref = tmp_path / "reference"
    names = ["rgb", "height", "height_present"]
    presence = [float(np.load(ref / f"input_{k}.height_present.npy")[0]) for k in range(4)]
    assert presence == [1.0, 1.0, 0.0, 0.0]
    assert not np.load(ref / "input_2.height.npy").any()
    assert np.array_equal(np.load(ref / "input_0.rgb.npy"), np.load(ref / "input_2.rgb.npy"))
    _ort_matches_references(onnx_path, ref, names, 4)
    # Without the height map the graph answers from its learned token, whatever the height tensor holds.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {n: np.load(ref / f"input_2.{n}.npy") for n in names}
    noise = dict(feeds, height=np.random.default_rng(0).standard_normal(feeds["height"].shape).astype(np.float32))
    assert np.array_equal(sess.run(["logits"], feeds)[0], sess.run(["logits"], noise)[0])
    assert json.loads((tmp_path / "summary.json").read_text())["student"]["by_subset"].keys() == {"rgb+height", "rgb"}


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"inputs": {}}, "[inputs]: manifest data needs one [inputs.<column>] table"),
        ({"student": {"model": "cnn-18k"}}, "[student].model: cnn-18k takes one image, not the 2 inputs"),
        ({"student": {"model": "vit-rgb-student", "inputs": ["depth"]}}, "[student].inputs: ['depth']"),
        ({"student": {"model": "vit-rgb-student", "inputs": ["height"]}}, "are all optional"),
        ({"student": {"model": "vit-rgb-student", "inputs": ["rgb"], "modality_dropout": 0.3}}, "sees no optional"),
        ({"distill": {"method": "edam"}, "student": {"model": "cnn-18k"}}, "returns no attention maps"),
        ({"distill": {"method": "crld"}}, "'crld' is defined for one camera image"),
    ],
)
def test_manifest_config_mistakes_are_config_errors(tmp_path, inspection, change, needle):
    raw = _config(inspection, student={"model": "mm-vit-missing-student"})
    for name, table in change.items():
        raw[name] = table if name == "inputs" else {**raw.get(name, {}), **table}
    with pytest.raises(ConfigError) as e:
        cfg = from_dict(raw, "test.toml")
        run_distill(cfg, tmp_path, False, Emit(), "pytest")  # errors found only once the data is read
    assert needle in str(e.value)


def test_a_missing_column_is_named(tmp_path, inspection):
    from edgekd_train.data.splits import DataError

    raw = _config(inspection, student={"model": "mm-vit-missing-student"})
    raw["inputs"] = {"rgb": {"color": "rgb"}, "thermal": {"color": "gray", "optional": True}}
    with pytest.raises(DataError, match="no column thermal"):
        run_distill(from_dict(raw, "test.toml"), tmp_path, False, Emit(), "pytest")


def test_one_input_data_is_the_one_input_case_of_the_batch(tmp_path):
    """Fashion-MNIST-shaped data through the same path: one input named "image", one ONNX input."""
    from edgekd_train.data.feed import Feed
    from edgekd_train.data.multimodal import MultiNormalizer, MultiTensorData
    from edgekd_train.data.tensors import Normalizer

    data = MultiTensorData.one_input(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), torch.arange(8) % 10)
    feed = Feed(MultiNormalizer({"image": Normalizer((0.5,), (0.3,))}), flip=True, shift=2)
    batch = feed.train_batch(data, torch.arange(8), torch.Generator().manual_seed(0))
    assert set(batch) == {"image", "label", "index"} and batch["image"].shape == (8, 1, 28, 28)
