"""KD loss behaviour: decreases, alpha=0 is CE, gradients reach only the student."""

import pytest
import torch
import torch.nn.functional as F

from edgekd_train.distillers import KDDistiller, ScratchDistiller
from edgekd_train.distillers.kd import kd_loss
from edgekd_train.models import create_model


def _batch(n=32):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 1, 28, 28, generator=g), "label": torch.randint(0, 10, (n,), generator=g)}


def _kd(alpha=0.9, T=4.0):
    torch.manual_seed(0)
    return KDDistiller(create_model("cnn-18k", 10, 1), create_model("wrn16-1", 10, 1), T=T, alpha=alpha)


def test_kd_definition_matches_methods_md():
    zs, zt = torch.randn(8, 10), torch.randn(8, 10)
    T = 4.0
    pt = F.softmax(zt / T, 1)
    manual = (pt * (pt.log() - F.log_softmax(zs / T, 1))).sum(1).mean() * T * T
    assert torch.allclose(kd_loss(zs, zt, T), manual, atol=1e-6)
    assert float(kd_loss(zt, zt, T)) == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_decreases():
    d = _kd()
    b = _batch()
    opt = torch.optim.Adam(d.parameters_to_train(), lr=3e-3)
    d.train()
    first = None
    for _ in range(15):
        losses = d.losses(b)
        assert set(losses) == {"ce", "kd", "total"} and all(torch.isfinite(v) for v in losses.values())
        first = first if first is not None else float(losses["total"].detach())
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    assert float(d.losses(b)["total"]) < first


def test_alpha_zero_equals_ce():
    d = _kd(alpha=0.0)
    d.eval()
    b = _batch()
    losses, logits = d(b)
    assert torch.allclose(losses["total"], F.cross_entropy(d.student(b["image"]), b["label"]), atol=1e-6)
    s = ScratchDistiller(d.student).eval()
    assert torch.allclose(s.losses(b)["total"], losses["total"], atol=1e-6)


def test_gradients_reach_only_the_student():
    d = _kd()
    d.train()
    assert not d.teacher.training  # frozen teacher stays in eval mode
    d.losses(_batch())["total"].backward()
    assert all(p.grad is None and not p.requires_grad for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.student.parameters())
    trainable = {id(p) for p in d.parameters_to_train()}
    assert trainable == {id(p) for p in d.student.parameters()}
