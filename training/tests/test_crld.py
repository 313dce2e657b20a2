"""CRLD (methods.md section 4): its views, its confidence masks, its losses, and a tiny run."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import HAVE_FASHION, TRAINING
from onnx import numpy_helper

from edgekd_train.data.tensors import Normalizer, augment
from edgekd_train.data.views import STRONG_OPS, ViewMaker, rand_augment_op
from edgekd_train.distillers import CRLDDistiller, StepFunctions
from edgekd_train.distillers.crld import confidence_masks, consistency_losses, kl_per_sample, mask_rates
from edgekd_train.export import export_onnx, parity_tolerance
from edgekd_train.models import count_params, create_model

NORM = Normalizer(mean=(0.286,), std=(0.353,))


def _logits_with_top_probability(p_top: list[float], classes: int = 10) -> torch.Tensor:
    """Logits whose softmax gives class 0 probability p and spreads the rest evenly."""
    rows = []
    for p in p_top:
        rest = (1.0 - p) / (classes - 1)
        rows.append(torch.log(torch.tensor([p] + [rest] * (classes - 1))))
    return torch.stack(rows)


def _images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


# ---- views


def test_single_view_is_the_existing_augmentation_bit_for_bit():
    u8 = _images()
    vm = ViewMaker("single", NORM, torch.device("cpu"), flip=True, shift=2)
    got = vm(u8, torch.Generator().manual_seed(3))
    want = NORM(augment(u8, torch.Generator().manual_seed(3), True, 2))
    assert set(got) == {"image"} and torch.equal(got["image"], want)


def test_crld_views_are_two_different_normalised_views_of_the_same_images():
    u8 = _images(32)
    vm = ViewMaker("crld", NORM, torch.device("cpu"), flip=False, shift=0)
    a = vm(u8, torch.Generator().manual_seed(0))
    b = vm(u8, torch.Generator().manual_seed(0))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image_strong"], b["image_strong"])  # seeded
    assert torch.equal(a["image"], NORM(u8))  # no flip/shift: the weak view is the image itself
    assert a["image_strong"].shape == a["image"].shape
    assert not torch.equal(a["image_strong"], a["image"])
    pixels = a["image_strong"] * NORM.std[0] + NORM.mean[0]  # back to [0, 1]
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6


def test_strong_ops_match_pil():
    # Point ops equal PIL exactly; blend-based enhancers within one grey level (rounding);
    # rotation and translation equal PIL's nearest-neighbour transforms about the centre.
    from PIL import Image, ImageEnhance, ImageOps

    rng = np.random.default_rng(0)
    imgs = (rng.integers(0, 256, (8, 28, 28)) * 0.6 + 30).astype(np.uint8)  # not full range: autocontrast acts
    imgs[:, 10:18, 10:18] = 240  # some structure for sharpness and the geometric ops
    x = torch.from_numpy(imgs[:, None].astype(np.float32))

    def pil(fn):
        return torch.from_numpy(
            np.stack([np.asarray(fn(Image.fromarray(a))) for a in imgs])[:, None].astype(np.float32)
        )

    def ours(name, mag):
        return rand_augment_op(x, torch.full((8,), STRONG_OPS.index(name)), torch.full((8,), mag))

    exact = {
        ("autocontrast", 0.3): ImageOps.autocontrast,
        ("equalize", 0.3): ImageOps.equalize,
        ("posterize", 0.25): lambda im: ImageOps.posterize(im, 5),  # bits = int(4 + 4 * 0.25)
        ("solarize", 0.5): lambda im: ImageOps.solarize(im, 128),  # threshold = 256 * 0.5
        ("rotate", 0.8): lambda im: im.rotate(18),  # (2 * 0.8 - 1) * 30 degrees
        ("translate_x", 0.8): lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0.18 * 28, 0, 1, 0)),
        ("identity", 0.7): lambda im: im,
    }
    for (name, mag), fn in exact.items():
        assert torch.equal(ours(name, mag), pil(fn)), name
    factor = 0.05 + 0.9 * 0.4
    for name, fn in {
        "brightness": ImageEnhance.Brightness,
        "contrast": ImageEnhance.Contrast,
        "sharpness": ImageEnhance.Sharpness,
    }.items():
        assert (
            float((ours(name, 0.4) - pil(lambda im, enhancer=fn: enhancer(im).enhance(factor))).abs().max()) <= 1.0
        ), name


def test_every_sample_gets_its_own_op():
    x = torch.full((2, 1, 28, 28), 100.0)
    out = rand_augment_op(
        x, torch.tensor([STRONG_OPS.index("identity"), STRONG_OPS.index("solarize")]), torch.tensor([0.5, 0.0])
    )  # solarize threshold 0: everything inverts
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], 255.0 - x[1])


# ---- masks and losses


def test_masks_follow_teacher_confidence():
    weak = _logits_with_top_probability([0.95, 0.90, 0.89, 0.30])
    strong = _logits_with_top_probability([0.15, 0.20, 0.90, 0.19])
    m_w, m_s = confidence_masks(weak, strong, tau_w=0.9, tau_s=0.2)
    assert m_w.tolist() == [1.0, 1.0, 0.0, 0.0]  # >= tau_w on the weak view
    assert m_s.tolist() == [0.0, 1.0, 1.0, 0.0]  # >= tau_s on the strong view
    rates = mask_rates(weak, strong, tau_w=0.9, tau_s=0.2)
    assert rates["mask_weak"].item() == 0.5 and rates["mask_strong"].item() == 0.5
    assert rates["teacher_conf_weak"].item() == pytest.approx((0.95 + 0.90 + 0.89 + 0.30) / 4, abs=1e-5)
    assert rates["teacher_conf_strong"].item() == pytest.approx((0.15 + 0.20 + 0.90 + 0.19) / 4, abs=1e-5)


def test_masked_samples_contribute_nothing_and_the_mean_runs_over_the_batch():
    t_weak = _logits_with_top_probability([0.95, 0.50])  # only sample 0 passes tau_w = 0.9
    t_strong = _logits_with_top_probability([0.10, 0.60])  # only sample 1 passes tau_s = 0.2
    s_weak, s_strong = torch.randn(2, 10), torch.randn(2, 10)
    within, cross = consistency_losses(t_weak, t_strong, s_weak, s_strong, T=4.0, tau_w=0.9, tau_s=0.2)
    kl = lambda a, b: kl_per_sample(a, b, 4.0)  # noqa: E731
    assert torch.allclose(within, (kl(t_weak, s_weak)[0] + kl(t_strong, s_strong)[0]) / 2)
    assert torch.allclose(cross, (kl(t_weak, s_strong)[1] + kl(t_strong, s_weak)[1]) / 2)
    # Changing a masked-out sample's student logits changes nothing.
    s_weak2 = s_weak.clone()
    s_weak2[1] += 5.0
    within2, _ = consistency_losses(t_weak, t_strong, s_weak2, s_strong, T=4.0, tau_w=0.9, tau_s=0.2)
    assert torch.equal(within, within2)


def test_kl_per_sample_is_hintons_kd_term():
    zs, zt = torch.randn(6, 10), torch.randn(6, 10)
    pt = F.softmax(zt / 2.0, 1)
    manual = (pt * (pt.log() - F.log_softmax(zs / 2.0, 1))).sum(1) * 4.0
    assert torch.allclose(kl_per_sample(zt, zs, 2.0), manual, atol=1e-6)


def _crld(teacher):
    torch.manual_seed(0)
    return CRLDDistiller(create_model("cnn-18k", 10, 1), teacher)


def test_crld_losses_are_finite_and_fall(learnable_batch, confident_teacher):
    d = _crld(confident_teacher())
    b = learnable_batch()
    opt = torch.optim.Adam(d.parameters_to_train(), lr=3e-3)
    fns = StepFunctions(forward=d, targets=d.targets)
    d.eval()
    before = d.losses(b)
    assert set(before) == {"ce", "within_view", "cross_view", "total"}
    assert before["within_view"].item() > 0 and before["cross_view"].item() > 0  # the masks let some through
    d.train()
    for _ in range(15):
        losses, logits = d.step(fns, b, opt)
        loss = losses["total"]
        assert torch.isfinite(loss) and logits.shape == (32, 10)
    d.eval()
    after = d.losses(b)
    assert all(torch.isfinite(v) for v in after.values())
    assert float(after["total"]) < 0.8 * float(before["total"])


def test_crld_gradients_reach_only_the_student(learnable_batch, confident_teacher):
    d = _crld(confident_teacher())
    d.train()
    assert not d.teacher.training
    d.losses(learnable_batch())["total"].backward()
    assert all(p.grad is None and not p.requires_grad for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.student.parameters())
    assert {id(p) for p in d.parameters_to_train()} == {id(p) for p in d.student.parameters()}


def test_crld_export_holds_the_student_only(tmp_path, learnable_batch, confident_teacher):
    d = _crld(confident_teacher())
    d.train()
    d.losses(learnable_batch())  # move the BN statistics
    export_onnx(d.student, {"image": (1, 1, 28, 28)}, tmp_path / "s.onnx")
    m = onnx.load(str(tmp_path / "s.onnx"))
    n_init = sum(numpy_helper.to_array(t).size for t in m.graph.initializer)
    n_student = count_params(d.student)
    assert abs(n_init - n_student) <= 0.05 * n_student, (n_init, n_student)  # BN folded into the convs


@pytest.mark.skipif(not HAVE_FASHION, reason="/usr/share/datasets/fashion-mnist absent (dataset-fashion-mnist)")
def test_crld_tiny_run_end_to_end(tmp_path, cli, teacher_weights):
    out = tmp_path / "run"
    r, evs = cli(
        [
            "distill",
            "--config",
            str(TRAINING / "configs" / "tiny-cpu.toml"),
            "--out",
            str(out),
            "--set",
            'distill.method="crld"',
            "--set",
            f'teacher.weights="{teacher_weights}"',
            "--set",
            "crld.log_every=4",
        ]
    )
    assert r.returncode == 0, r.stderr
    (phase,) = [e for e in evs if e["event"] == "phase" and e["phase"] == "student"]
    assert phase["views"] == "crld"
    summary = evs[-1]
    assert summary["event"] == "summary" and summary["method"] == "crld"
    assert summary["parity_max_abs_diff"] <= parity_tolerance() and (out / "student.onnx").is_file()
    assert summary["throughput"]["views"] == "crld" and summary["throughput"]["images_per_s"] > 0
    # [run] asks for bf16 and channels_last by default; they are for CUDA, so a CPU run trains without.
    assert summary["throughput"]["amp"] is False and summary["throughput"]["channels_last"] is False
    # The gates are logged every 4 steps, and the summary gives their mean over the last epoch.
    diags = [e for e in evs if e["event"] == "diagnostics"]
    assert [e["step"] for e in diags] == [1, 5, 9, 13]  # 400 images / batch 32 = 13 steps
    masks = summary["crld_masks"]
    assert masks["steps"] == 4 and masks["tau_w"] == 0.9 and masks["tau_s"] == 0.2
    assert masks["mask_weak"] == pytest.approx(sum(e["mask_weak"] for e in diags) / 4)
    assert all(0.0 <= e[k] <= 1.0 for e in diags for k in ("mask_weak", "mask_strong", "teacher_conf_weak"))
    assert "gradients.png" not in " ".join(summary["plots"])  # CRLD has no gradient balance to plot
