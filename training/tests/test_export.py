"""Export: onnxruntime parity, no teacher/training-only weights in the graph, valid card."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgekd_train.card import read_card
from edgekd_train.distillers import KDDistiller
from edgekd_train.export import build_card, card_input, export_student, parity_tolerance
from edgekd_train.models import count_params, create_model


def test_export_parity_and_student_only(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    d = KDDistiller(create_model("cnn-70k", 10, 1), create_model("wrn16-1", 10, 1))
    d.train()
    d.losses({"image": torch.randn(16, 1, 28, 28), "label": torch.randint(0, 10, (16,))})  # move BN stats
    labels = [f"c{i}" for i in range(10)]
    cal = {
        "temperature": 1.2,
        "ece": {"before": 0.1, "after": 0.05},
        "accept": {"default": None, "per_class": {k: None for k in labels}},
        "target": {"max_error_among_accepted": 0.01, "coverage_on_calibration_set": None},
        "notes": ["x"],
    }
    card = build_card(
        name="t",
        labels=labels,
        inputs=[card_input("image", (1, 1, 28, 28), "gray", 1 / 255, [0.286], [0.353])],
        calibration=cal,
        method="kd",
        teachers=["wrn16-1"],
        dataset="fashion-mnist",
        metrics={"test_accuracy": 0.5, "params": 1, "teacher_test_accuracy": float("nan")},
        command="pytest",
    )
    imgs = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    res = export_student(d.student, card, [{"image": x[None]} for x in imgs], tmp_path)
    assert res["max_abs_diff"] is not None and res["max_abs_diff"] <= parity_tolerance()
    for k in range(8):
        x = np.load(tmp_path / "reference" / f"input_{k}.npy")
        y = np.load(tmp_path / "reference" / f"output_{k}.npy")
        assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32 and x.flags.c_contiguous
        assert y.shape == (1, 10) and y.dtype == np.float32
    m = onnx.load(str(tmp_path / "student.onnx"))
    n_init = sum(numpy_helper.to_array(t).size for t in m.graph.initializer)
    n_student = count_params(d.student)
    # BN folding removes the BN params and adds conv biases: close, and far below the teacher.
    assert abs(n_init - n_student) <= 0.05 * n_student, (n_init, n_student)
    assert n_init < count_params(d.teacher)
    assert [i.name for i in m.graph.input] == ["image"] and [o.name for o in m.graph.output] == ["logits"]
    assert {n.op_type for n in m.graph.node} <= {"Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm", "Reshape"}
    got = read_card(tmp_path / "student.onnx", validate=True)
    assert got["provenance"]["teachers"] == ["wrn16-1"] and "teacher_test_accuracy" not in got["provenance"]["metrics"]


def test_the_exporters_parity_check_follows_the_shared_tolerance_file(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from edgekd_train.export import ParityError, export_onnx, reference_tensors, verify_onnxruntime

    torch.manual_seed(0)
    student = create_model("cnn-18k", 10, 1).eval()
    export_onnx(student, {"image": (1, 1, 28, 28)}, tmp_path / "s.onnx")
    pairs = reference_tensors(student, [{"image": np.zeros((1, 1, 28, 28), np.float32)}], tmp_path / "ref")
    # References off by 5e-5: inside docs/parity.toml's 1e-4, outside a file that says 1e-5.
    shifted = [(x, y + np.float32(5e-5)) for x, y in pairs]
    assert verify_onnxruntime(tmp_path / "s.onnx", shifted) <= parity_tolerance()
    strict = tmp_path / "parity.toml"
    strict.write_text("max_abs_diff = 1e-5\n")
    monkeypatch.setenv("EDGEKD_PARITY_FILE", str(strict))
    parity_tolerance.cache_clear()
    try:
        assert parity_tolerance() == 1e-5
        with pytest.raises(ParityError, match="> 1e-05"):
            verify_onnxruntime(tmp_path / "s.onnx", shifted)
        strict.write_text("max_abs_diff = 1\n")
        parity_tolerance.cache_clear()
        with pytest.raises(ValueError, match="parity.toml: expected exactly"):
            parity_tolerance()
    finally:
        parity_tolerance.cache_clear()
