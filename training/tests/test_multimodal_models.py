"""Multimodal teacher, camera-only and missing-modality students, EDAM and CRD (methods.md 5, 6)."""

import numpy as np
import pytest
import torch

from edgekd_train.distillers import DISTILLERS, create_distiller
from edgekd_train.distillers.edam import align_maps, attention_cross_entropy
from edgekd_train.models import count_params, create_model, features_and_logits, inputs_of

B, N_DATA = 16, 64


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    present = (torch.arange(B) % 4 != 0).float()
    return {
        "rgb": torch.randn(B, 3, 32, 32, generator=g),
        "height": torch.randn(B, 1, 32, 32, generator=g) * present[:, None, None, None],
        "height_present": present,
        "label": torch.randint(0, 10, (B,), generator=g),
        "index": torch.randperm(N_DATA, generator=g)[:B],
    }


def _pair():
    torch.manual_seed(0)
    return create_model("vit-rgb-student", 10, 3), create_model("mm-vit-teacher", 10, 3)


def test_attention_maps_have_the_shapes_edam_needs():
    student, teacher = _pair()
    b = _batch()
    zt, maps_t = teacher.forward_attention(*inputs_of(teacher, b))
    zs, maps_s = student.forward_attention(*inputs_of(student, b))
    assert zt.shape == zs.shape == (B, 10)
    # 32x32 images in 4x4 patches: 64 tokens per stream; teacher cross maps rgb queries x height keys.
    assert maps_t["rgb.cross1"].shape == maps_s["rgb.self1"].shape == (B, 4, 64, 64)
    assert set(maps_s) == {"rgb.self0", "rgb.self1"}
    for a in (*maps_t.values(), *maps_s.values()):
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    f, z = features_and_logits(teacher, inputs_of(teacher, b))
    assert f.shape == (B, teacher.num_features) and torch.equal(z, zt)


def test_the_camera_student_is_at_least_2_5x_smaller():
    student, teacher = _pair()
    assert count_params(teacher) >= 2.5 * count_params(student)


def test_edam_aligns_heads_and_key_grids():
    # A 4-head teacher over an 8x8 key grid, a 2-head student over a 4x4 one.
    t = torch.softmax(torch.randn(2, 4, 16, 64) * 3, -1)
    aligned, _ = align_maps(t, torch.empty(2, 2, 16, 16))
    assert aligned.shape == (2, 2, 16, 16)
    torch.testing.assert_close(aligned.sum(-1), torch.ones(2, 2, 16))
    # The student that copies the aligned teacher scores better than a random one.
    other = torch.softmax(torch.randn(2, 2, 16, 16) * 3, -1)
    assert attention_cross_entropy(t, aligned) < attention_cross_entropy(t, other)
    with pytest.raises(ValueError, match="query tokens"):
        attention_cross_entropy(t, torch.softmax(torch.randn(2, 4, 9, 64), -1))


def _falls(method: str, keys: set[str], **params) -> dict[str, torch.Tensor]:
    student, teacher = _pair()
    d = create_distiller(method, student, teacher, **params)
    d.train()
    opt = torch.optim.Adam(d.parameters_to_train(), lr=3e-3)
    b = _batch()
    first = last = None
    for _ in range(6):
        losses, _ = d(b)
        assert set(losses) == keys and all(torch.isfinite(v) for v in losses.values())
        last = {k: float(v.detach()) for k, v in losses.items()}
        first = first or last
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    assert last["total"] < first["total"]
    return {"first": first, "last": last, "distiller": d}


def test_edam_loss_falls():
    r = _falls("edam", {"ce", "attn", "kd", "total"}, alpha=0.5)
    assert r["last"]["attn"] < r["first"]["attn"]


def test_edam_rejects_unknown_layers():
    student, teacher = _pair()
    d = create_distiller("edam", student, teacher, layers=[["rgb.cross9", "rgb.self0"]])
    with pytest.raises(ValueError, match="rgb.cross9"):
        d(_batch())
    with pytest.raises(ValueError, match="layers"):
        create_distiller("edam", student, teacher, layers=[["only-one"]])


def test_crd_loss_falls_and_its_modules_are_trained():
    r = _falls("crd", {"ce", "crd", "kd", "total"}, n_data=N_DATA, k=32)
    d = r["distiller"]
    assert r["last"]["crd"] < r["first"]["crd"]
    assert d.crd in d.trainable_modules()
    assert {id(p) for p in d.crd.parameters()} <= {id(p) for p in d.parameters_to_train()}


def test_edam_plus_crd_sums_both():
    r = _falls("edam+crd", {"ce", "attn", "crd", "kd", "total"}, n_data=N_DATA, k=32)
    last = r["last"]
    assert last["total"] == pytest.approx(last["ce"] + 1.0 * last["attn"] + 0.8 * last["crd"], rel=1e-4)
    assert {"edam", "crd", "edam+crd"} <= set(DISTILLERS)


def test_crd_memory_changes_only_the_batch_rows():
    student, teacher = _pair()
    d = create_distiller("crd", student, teacher, n_data=N_DATA, k=8)
    d.train()
    b = _batch()
    before_s, before_t = d.crd.memory.mem_s.clone(), d.crd.memory.mem_t.clone()
    d(b)
    for before, after in ((before_s, d.crd.memory.mem_s), (before_t, d.crd.memory.mem_t)):
        changed = (before != after).any(dim=1)
        assert set(changed.nonzero().flatten().tolist()) == set(b["index"].tolist())


def test_crd_needs_n_data():
    student, teacher = _pair()
    with pytest.raises(ValueError, match="n_data"):
        create_distiller("crd", student, teacher)


def _missing_student():
    torch.manual_seed(0)
    return create_model("mm-vit-missing-student", 10, 3).eval()


def test_missing_modality_student_uses_presence_and_ignores_a_missing_height():
    m = _missing_student()
    assert m.input_names == ("rgb", "height", "height_present")
    b = _batch()
    rgb, height = b["rgb"], b["height"]
    on, off = torch.ones(B), torch.zeros(B)
    with torch.no_grad():
        assert not torch.allclose(m(rgb, height, on), m(rgb, height, off))
        torch.testing.assert_close(m(rgb, height, off), m(rgb, torch.randn_like(height) * 5, off))


def test_missing_modality_student_exports_one_graph_for_both_presences(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    # Trained under CRD (projectors and banks beside it), the student alone is exported.
    d = create_distiller("crd", _missing_student(), create_model("mm-vit-teacher", 10, 3), n_data=N_DATA, k=8)
    m = d.student.eval()
    b = _batch()
    inputs = inputs_of(m, b)
    path = tmp_path / "student.onnx"
    torch.onnx.export(
        m, inputs, str(path), opset_version=17, dynamo=False, input_names=list(m.input_names), output_names=["logits"]
    )
    graph = onnx.load(str(path)).graph
    names = [i.name for i in graph.initializer] + [n.name for n in graph.node]
    assert not [n for n in names if any(w in n.lower() for w in ("embed_s", "embed_t", "mem_", "memory", "teacher"))]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for presence in (1.0, 0.0):
        feed = {
            **dict(zip(m.input_names, (t.numpy() for t in inputs), strict=True)),
            "height_present": np.full(B, presence, np.float32),
        }
        (got,) = sess.run(["logits"], feed)
        with torch.no_grad():
            want = m(b["rgb"], b["height"], torch.full((B,), presence)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_crd_also_distils_unimodal_models_on_the_image():
    torch.manual_seed(0)
    d = create_distiller("crd", create_model("cnn-18k", 10, 1), create_model("wrn16-1", 10, 1), n_data=N_DATA, k=8)
    b = {"image": torch.randn(B, 1, 28, 28), "label": torch.randint(0, 10, (B,)), "index": torch.arange(B)}
    losses, logits = d(b)
    assert logits.shape == (B, 10) and all(torch.isfinite(v) for v in losses.values())
