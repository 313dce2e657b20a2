"""DTO-KD (methods.md section 3): the weights, the exact closed form, the update, and a tiny run."""

import json

import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import HAVE_FASHION, TRAINING
from onnx import numpy_helper

from edgekd_train.distillers import DTOKDDistiller, StepFunctions
from edgekd_train.distillers.base import running_stats_frozen
from edgekd_train.distillers.dtokd import ObjectiveWeights, exact_pair_weights
from edgekd_train.export import export_onnx, parity_tolerance
from edgekd_train.models import count_params, create_model


def _dtokd(teacher, **kw):
    torch.manual_seed(0)
    return DTOKDDistiller(create_model("cnn-18k", 10, 1), teacher, **kw)


def _fns(d):
    return StepFunctions(forward=d, targets=d.targets)


# ---- the weights


def test_exact_closed_form_matches_a_hand_computed_case():
    # g1 = (1, 0), g2 = (0, 2): G = [[1, 0], [0, 4]] -> pi1 = (4 - 0) / (1 + 4 - 0) = 0.8, pi2 = 0.2,
    # g* = (0.8, 0.4) and <g*, g1> = <g*, g2> = 0.8: equal descent on both.
    pi1, pi2 = exact_pair_weights(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(4.0))
    assert float(pi1) == pytest.approx(0.8) and float(pi2) == pytest.approx(0.2)
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    g = pi1 * g1 + pi2 * g2
    assert float(g @ g1) == pytest.approx(float(g @ g2))
    # g1 = (1, 0), g2 = (2, 0): the unconstrained pi1 = (4 - 2) / (1 + 4 - 4) = 2 is clipped to the
    # simplex: all weight on the shorter gradient.
    pi1, pi2 = exact_pair_weights(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0))
    assert (float(pi1), float(pi2)) == (1.0, 0.0)
    # Identical gradients: the segment is a point, any pi is optimal; (1/2, 1/2).
    pi1, pi2 = exact_pair_weights(torch.tensor(3.0), torch.tensor(3.0), torch.tensor(3.0))
    assert (float(pi1), float(pi2)) == (0.5, 0.5)


def test_famo_weights_shift_towards_the_lagging_objective():
    w = ObjectiveWeights(2)
    assert w.pi.tolist() == [0.5, 0.5]
    # Objective 0 halves every step, objective 1 barely moves: objective 1 is lagging.
    for _ in range(10):
        w.famo_update(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.99]))
    assert float(w.pi[1]) > 0.6 > float(w.pi[0])
    # Then the roles swap and the weight flows back (after Adam's momentum has turned).
    for _ in range(30):
        w.famo_update(torch.tensor([1.0, 1.0]), torch.tensor([0.99, 0.5]))
    assert float(w.pi[0]) > 0.5 > float(w.pi[1])


def test_famo_gradient_weights_are_pi_over_loss_normalised():
    w = ObjectiveWeights(2)
    # pi = (1/2, 1/2), L = (2, 0.5): w = (0.25, 1) / 1.25 = (0.2, 0.8), so that
    # sum_k w_k grad L_k = sum_k pi_k grad log L_k / c with c = sum_k pi_k / L_k.
    assert torch.allclose(w.famo_weights(torch.tensor([2.0, 0.5])), torch.tensor([0.2, 0.8]), atol=1e-6)
    # An objective that is exactly 0 (every sample masked) sits the step out instead of taking it all.
    assert w.famo_weights(torch.tensor([2.0, 0.0])).tolist() == [1.0, 0.0]


def test_famo_update_is_adam_on_the_softmax_jacobian():
    # The official FAMO update: xi.grad = autograd.grad(softmax(xi), xi, grad_outputs=delta);
    # Adam(lr=0.025, weight_decay=0.01). Ours keeps that state in buffers; both must agree.
    ours = ObjectiveWeights(3, lr=0.025, weight_decay=0.01)
    xi = torch.zeros(3, requires_grad=True)
    ref = torch.optim.Adam([xi], lr=0.025, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        before = torch.rand(3, generator=g) + 0.5
        after = before * (torch.rand(3, generator=g) + 0.3)
        ours.famo_update(before, after)
        delta = before.log() - after.log()
        xi.grad = torch.autograd.grad(F.softmax(xi, 0), xi, grad_outputs=delta)[0]
        ref.step()
    assert torch.allclose(ours.xi, xi.detach(), atol=1e-6)
    assert torch.allclose(ours.pi, F.softmax(xi.detach(), 0), atol=1e-6)


# ---- the distiller


@pytest.mark.parametrize(
    "kw",
    [{}, {"views": "crld"}, {"balancer": "exact", "feature_loss": False}],
    ids=["famo", "famo-crld-views", "exact"],
)
def test_dtokd_losses_are_finite_and_every_objective_falls(kw, learnable_batch, confident_teacher):
    d = _dtokd(confident_teacher(), **kw)
    b = learnable_batch()
    opt = torch.optim.Adam(d.parameters_to_train(), lr=3e-3)
    d.eval()
    with torch.no_grad():
        before = d.losses(b)
    d.train()
    for _ in range(20):
        losses, _ = d.step(_fns(d), b, opt)
        assert set(losses) == set(before) and all(torch.isfinite(v) for v in losses.values())
    d.eval()
    with torch.no_grad():
        after = d.losses(b)
    assert set(after) == set(d.objectives) | {"total"}
    for k in d.objectives:
        assert torch.isfinite(after[k]) and float(after[k]) < float(before[k]), (k, before, after)


def test_exact_step_descends_both_log_losses_equally(learnable_batch, confident_teacher):
    d = _dtokd(confident_teacher(), balancer="exact", feature_loss=False, clip_norm=0.0)
    b = learnable_batch()
    d.train()
    opt = torch.optim.SGD(d.parameters_to_train(), lr=0.0)  # leaves the gradient the step set in p.grad
    d.step(_fns(d), b, opt)
    pi1 = float(d.weights.pi[0])
    assert 0.0 < pi1 < 1.0  # interior optimum, where the equal-descent property holds
    params = d.parameters_to_train()
    g_star = torch.cat([p.grad.reshape(-1) for p in params])
    with running_stats_frozen(d.student):  # same batch statistics as the step's forward
        losses = d.losses(b)
    g = [
        torch.cat(
            [x.reshape(-1) for x in torch.autograd.grad(losses[k] / losses[k].detach(), params, retain_graph=True)]
        )
        for k in d.objectives
    ]
    assert float(g_star @ g[0]) == pytest.approx(float(g_star @ g[1]), rel=1e-3)
    assert float(g_star @ g[0]) > 0


def test_gradients_reach_only_the_student_and_the_projector(learnable_batch, confident_teacher):
    d = _dtokd(confident_teacher())
    d.train()
    assert not d.teacher.training
    opt = torch.optim.SGD(d.parameters_to_train(), lr=0.0)
    d.step(_fns(d), learnable_batch(), opt)
    assert all(p.grad is None and not p.requires_grad for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.student.parameters())
    assert all(p.grad is not None for p in d.projector.parameters())
    assert list(d.weights.parameters()) == []  # the weights move by their own rule, not by the optimiser
    trainable = {id(p) for p in d.parameters_to_train()}
    assert trainable == {id(p) for p in d.student.parameters()} | {id(p) for p in d.projector.parameters()}


def test_projector_stays_orthogonal_under_adamw(learnable_batch, confident_teacher):
    d = _dtokd(confident_teacher())
    d.train()
    opt = torch.optim.AdamW(d.parameters_to_train(), lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        d.step(_fns(d), learnable_batch(), opt)
    w = d.projector.weight.detach()  # (D_t, D_s) = (64, 32): orthonormal columns
    assert torch.allclose(w.T @ w, torch.eye(w.shape[1]), atol=1e-4)


def test_diagnostics_measure_without_touching_training_state(learnable_batch, confident_teacher):
    d = _dtokd(confident_teacher())
    d.train()
    bn_before = {k: v.clone() for k, v in d.student.state_dict().items() if "running" in k}
    out = d.diagnose(learnable_batch())
    assert set(out) == {
        "pi_task",
        "pi_kl",
        "pi_feat",
        "inner_kl",
        "cosine_kl",
        "norm_ratio_kl",
        "inner_feat",
        "cosine_feat",
        "norm_ratio_feat",
    }
    assert all(torch.isfinite(v) for v in out.values())
    assert all(-1.0 <= float(out[f"cosine_{k}"]) <= 1.0 and float(out[f"norm_ratio_{k}"]) > 0 for k in ("kl", "feat"))
    assert all(p.grad is None for p in d.parameters_to_train())
    assert all(torch.equal(v, d.student.state_dict()[k]) for k, v in bn_before.items())


def test_export_leaves_the_projector_and_weights_out(tmp_path, learnable_batch, confident_teacher):
    d = _dtokd(confident_teacher())
    d.train()
    d.step(_fns(d), learnable_batch(), torch.optim.Adam(d.parameters_to_train(), lr=1e-3))
    export_onnx(d.student, {"image": (1, 1, 28, 28)}, tmp_path / "s.onnx")
    m = onnx.load(str(tmp_path / "s.onnx"))
    inits = [numpy_helper.to_array(t) for t in m.graph.initializer]
    n_init, n_student = sum(a.size for a in inits), count_params(d.student)
    n_projector = count_params(d.projector)
    assert abs(n_init - n_student) <= 0.05 * n_student < n_projector, (n_init, n_student, n_projector)
    assert not any(a.shape in {(64, 32), (32, 64)} for a in inits)  # no projector-shaped tensor
    assert not any(k.startswith(("projector", "weights")) for k in d.student.state_dict())


@pytest.mark.skipif(not HAVE_FASHION, reason="/usr/share/datasets/fashion-mnist absent (dataset-fashion-mnist)")
def test_dtokd_with_crld_views_tiny_run_end_to_end(tmp_path, cli, teacher_weights):
    out = tmp_path / "run"
    r, evs = cli(
        [
            "distill",
            "--config",
            str(TRAINING / "configs" / "tiny-cpu.toml"),
            "--out",
            str(out),
            "--set",
            'distill.method="dtokd"',
            "--set",
            'distill.views="crld"',
            "--set",
            "dtokd.log_every=4",
            "--set",
            f'teacher.weights="{teacher_weights}"',
        ]
    )
    assert r.returncode == 0, r.stderr
    grads = [e for e in evs if e["event"] == "diagnostics"]
    assert [e["step"] for e in grads] == [1, 5, 9, 13]  # 400 images / batch 32 = 13 steps
    # The gradient balance, and CRLD's gates since the views are CRLD's.
    assert all(
        {"inner_kl", "cosine_feat", "norm_ratio_kl", "pi_task", "mask_weak", "mask_strong"} <= set(e) for e in grads
    )
    summary = evs[-1]
    assert summary["event"] == "summary" and summary["method"] == "dtokd"
    assert summary["crld_masks"]["steps"] == 4
    assert str(out / "gradients.png") in summary["plots"] and (out / "gradients.png").stat().st_size > 0
    assert summary["parity_max_abs_diff"] <= parity_tolerance()
    ckpt = torch.load(out / "checkpoints" / "student.pt", weights_only=False)
    assert len(ckpt["extra_modules"]) == 2  # projector and weights: checkpointed, never exported
    m = onnx.load(str(out / "student.onnx"))
    n_init = sum(numpy_helper.to_array(t).size for t in m.graph.initializer)
    assert abs(n_init - summary["student"]["params"]) <= 0.05 * summary["student"]["params"]
    assert json.loads((out / "summary.json").read_text())["throughput"]["views"] == "crld"
