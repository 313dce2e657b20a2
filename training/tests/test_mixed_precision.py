"""The bf16 + channels_last training path, run on the CPU.

On CUDA the pipeline trains under bf16 autocast with channels_last models and batches. CI has no
GPU, so these tests build the same Context on the CPU (CPU autocast, the same code path): every
method's step must run, keep fp32 weights, move them the way the fp32 step does, log finite
losses and leave a student whose ONNX export matches PyTorch. What they cannot show is CUDA's
own autocast op lists or speed: that is the owed GPU check (training/scripts/gpu_check.sh)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd_train.config import StudentConfig
from edgekd_train.data.feed import Feed
from edgekd_train.data.multimodal import MultiNormalizer, MultiTensorData
from edgekd_train.data.tensors import Normalizer
from edgekd_train.distillers import create_distiller
from edgekd_train.export import export_onnx, parity_tolerance, reference_tensors, verify_onnxruntime
from edgekd_train.models import create_model
from edgekd_train.train import Context, fit, predict

NORM = Normalizer((0.5,), (0.3,))
FEED = Feed(MultiNormalizer({"image": NORM}))
SEC = StudentConfig(model="cnn-18k", epochs=1, lr=3e-3, batch_size=16, schedule="constant")

METHODS = {
    "scratch": ("scratch", {}),
    "kd": ("kd", {}),
    "crld": ("crld", {"log_every": 1}),
    "dtokd": ("dtokd", {"log_every": 1}),
    "dtokd+crld": ("dtokd", {"views": "crld", "log_every": 1}),
    "dtokd-exact": ("dtokd", {"balancer": "exact", "feature_loss": False, "log_every": 1}),
}


def _data(n, seed):
    # Each class a brighter band of rows, so the gradients carry the labels' signal, not noise only.
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 120, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, 0, 2 * c + 4 : 2 * c + 7] += 120
    return MultiTensorData.one_input(images, labels)


def _ctx(tmp_path: Path, events: list, amp: bool = True) -> Context:
    return Context(
        device=torch.device("cpu"),
        rank=0,
        world=1,
        emit=events.append,
        out=tmp_path,
        seed=0,
        amp=amp,
        channels_last=amp,
        checkpoint_every=1,
        log_steps=4,
        augment_flip=True,
        augment_shift=1,
        log=lambda _m: None,
    )


def _train(tmp_path: Path, name: str, amp: bool):
    method, params = METHODS[name]
    torch.manual_seed(0)
    student = create_model("cnn-18k", 10, 1)
    teacher = None if method == "scratch" else create_model("wrn16-1", 10, 1).eval()
    distiller = create_distiller(method, student, teacher, **params)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    events: list[dict] = []
    ctx = _ctx(tmp_path, events, amp)
    res = fit("student", distiller, SEC, _data(96, 0), _data(20, 1), FEED, ctx, tmp_path / "student.pt", False)
    update = torch.cat(
        [
            (v - start[k]).flatten()
            for k, v in student.state_dict().items()
            if v.is_floating_point() and k.endswith("weight")
        ]
    )
    return distiller, ctx, res, events, update


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_under_bf16_autocast_and_channels_last(tmp_path, name):
    distiller, ctx, res, events, update = _train(tmp_path / "bf16", name, amp=True)

    assert res.throughput["amp"] is True and res.throughput["channels_last"] is True
    losses = [e["loss"] for e in events if e["event"] in ("step", "epoch")]
    assert losses and all(math.isfinite(v) for v in losses), losses
    # The optimizer keeps fp32 weights; autocast only lowers the convolutions and matmuls.
    assert all(p.dtype == torch.float32 for p in distiller.parameters_to_train())
    conv = next(m for m in distiller.student.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # Evaluation and calibration see the fp32 model that is exported, not its bf16 forward.
    logits = predict(distiller.student, _data(20, 1), FEED, ctx)
    fp32 = predict(distiller.student, _data(20, 1), FEED, _ctx(tmp_path, [], amp=False))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert torch.allclose(logits, fp32, atol=1e-5), float((logits - fp32).abs().max())
    if METHODS[name][0] in ("crld", "dtokd"):
        # Gradient conflict and the CRLD gates, computed under the same autocast as the step.
        diag = [e for e in events if e["event"] == "diagnostics"]
        assert diag and all(math.isfinite(v) for e in diag for v in e.values() if isinstance(v, float)), diag[:1]

    # bf16 must train the same way fp32 does: same seed, data and views, so the weight updates of
    # the two runs point the same way (rounding differences only; a dtype slip that drops a loss
    # term or a gate would not).
    *_, update_fp32 = _train(tmp_path / "fp32", name, amp=False)
    cosine = float(torch.nn.functional.cosine_similarity(update, update_fp32, dim=0))
    assert cosine > 0.9, f"{name}: bf16 and fp32 updates differ (cosine {cosine:.3f})"


def test_a_bf16_trained_student_exports_fp32_and_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    distiller = create_distiller("kd", create_model("cnn-18k", 10, 1), create_model("wrn16-1", 10, 1).eval())
    fit("student", distiller, SEC, _data(64, 0), _data(20, 1), FEED, _ctx(tmp_path, []), tmp_path / "s.pt", False)
    path = tmp_path / "student.onnx"
    export_onnx(distiller.student, {"image": (1, 1, 28, 28)}, path)
    images = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    pairs = reference_tensors(distiller.student, [{"image": x[None]} for x in images], tmp_path / "reference")
    assert verify_onnxruntime(path, pairs) <= parity_tolerance()
