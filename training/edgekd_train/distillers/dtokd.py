"""DTO-KD (MoKD's final form): distillation as a multi-objective problem whose objective weights
follow the gradients, methods.md section 3.

Objectives (section 3.6, CNN students):
    task = CE(z_s, y)
    kl   = T^2 * KL(p^T(z_t) || p^T(z_s))                      [dtokd].kl_loss
    feat = SmoothL1(P(GAP(student)), LN(GAP(teacher)))          [dtokd].feature_loss (section 3.5)
P = orthogonal(Linear(D_s -> D_t, bias=False)) is the feature adaptation module: training-only,
owned here, never part of the student (export takes ``distiller.student``). With CRLD's views
(``views = "crld"``) the task is CE on both views, kl is CRLD's gated within/cross-view consistency
(section 4.3, its w_wv : w_cv ratio kept inside the objective) and feat is averaged over the views.

Weights, ``balancer``:
* "famo" (section 3.4, the default): pi = softmax(xi); the step descends
  sum_k pi_k log L_k / c with c = stopgrad(sum_k pi_k / L_k), i.e. sum_k w_k L_k with the detached
  convex weights w_k = (pi_k / L_k) / sum_j (pi_j / L_j); it clips the gradient norm, steps, then
  re-evaluates the same batch without grad and moves xi by Adam on the observed log-loss
  improvements, so objectives that improved less gain weight. Cost: one backward and one extra
  forward (the teacher's outputs are reused, not recomputed).
* "exact" (section 3.3): two objectives; per-objective log-loss gradients g_i = grad L_i / L_i,
  the closed-form min-norm point pi* of their segment, clipped to [0, 1]. Two backward passes per
  step: for small runs and for checking the amortised weights.

Every ``log_every`` steps ``diagnose`` measures the conflict (inner product and cosine of
grad L_k and grad L_task on the student's parameters) and dominance (||grad L_k|| / ||grad L_task||)
of each distillation objective k (section 3.2), for the events and the gradients plot.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrizations

from ..models import feature_dim, features_and_logits
from .base import Batch, Distiller, StepFunctions, detached, running_stats_frozen
from .crld import consistency_losses, mask_rates
from .kd import kd_loss

BALANCERS = ("famo", "exact")
_EPS = 1e-8  # FAMO's D_k = L_k - L_min + 1e-8, with L_min = 0 (all objectives are >= 0)


def exact_pair_weights(g11: torch.Tensor, g12: torch.Tensor, g22: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pi* = argmin over the simplex of ||pi_1 g_1 + pi_2 g_2||^2 from the Gram entries (section 3.3).

    Clipping to [0, 1] is the exact simplex projection for two objectives; a degenerate segment
    (g_1 == g_2) gives (1/2, 1/2). Tensor ops only, so no host sync."""
    denom = g11 + g22 - 2.0 * g12
    pi1 = ((g22 - g12) / denom.clamp(min=1e-12)).clamp(0.0, 1.0)
    pi1 = torch.where(denom < 1e-12, torch.full_like(pi1, 0.5), pi1)
    return pi1, 1.0 - pi1


class ObjectiveWeights(nn.Module):
    """The objective weights pi and FAMO's state, as buffers: checkpointed with the run, broadcast
    by DDP, updated in place (a compiled or CUDA-graphed forward reads the live values), and not
    seen by the model optimiser. xi's optimiser is Adam with L2 weight decay, written out here so
    its state lives in the same buffers."""

    def __init__(self, k: int, lr: float = 0.025, weight_decay: float = 0.01, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__()
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), betas, float(eps)
        self.register_buffer("xi", torch.zeros(k))
        self.register_buffer("pi", torch.full((k,), 1.0 / k))
        self.register_buffer("adam_m", torch.zeros(k))
        self.register_buffer("adam_v", torch.zeros(k))
        self.register_buffer("adam_t", torch.zeros(()))

    def famo_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """w_k = (pi_k / D_k) / sum_j (pi_j / D_j): sum_k w_k L_k has FAMO's gradient.

        FAMO assumes positive losses. An objective that is exactly 0 on a batch (CRLD's masks
        left out every sample) has no gradient and no improvement rate; with D_k = 1e-8 it would
        take all the weight and stall the others, so it sits this step out instead [OURS]."""
        losses = losses.detach()
        q = torch.where(losses > 0, self.pi / (losses + _EPS), torch.zeros_like(losses))
        return q / q.sum().clamp(min=1e-30)

    @torch.no_grad()
    def famo_update(self, before: torch.Tensor, after: torch.Tensor) -> None:
        """xi.grad = (d softmax(xi) / d xi)^T delta with delta_k = log D_k(before) - log D_k(after)
        (0 for an objective that was exactly 0 before or after: no rate to compare)."""
        delta = torch.log(before + _EPS) - torch.log(after + _EPS)
        delta = torch.where((before > 0) & (after > 0), delta, torch.zeros_like(delta))
        pi = torch.softmax(self.xi, 0)
        grad = pi * (delta - (pi * delta).sum()) + self.weight_decay * self.xi
        b1, b2 = self.betas
        self.adam_t.add_(1.0)
        self.adam_m.mul_(b1).add_(grad, alpha=1.0 - b1)
        self.adam_v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
        m_hat = self.adam_m / (1.0 - torch.pow(b1, self.adam_t))
        v_hat = self.adam_v / (1.0 - torch.pow(b2, self.adam_t))
        self.xi.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))
        self.pi.copy_(torch.softmax(self.xi, 0))


def _mean_over_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    # Every rank must see the same losses, or the replicated weights would drift apart.
    if world > 1:
        torch.distributed.all_reduce(t)
        t = t / world
    return t


def _flat(grads, params) -> torch.Tensor:
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )


class DTOKDDistiller(Distiller):
    needs = frozenset({"logits", "features"})
    needs_teacher = True

    def __init__(
        self,
        student,
        teacher,
        T: float = 4.0,
        views: str = "single",
        balancer: str = "famo",
        kl_loss: bool = True,
        feature_loss: bool = True,
        weight_lr: float = 0.025,
        weight_decay: float = 0.01,
        clip_norm: float = 1.0,
        log_every: int = 50,
        tau_w: float = 0.9,
        tau_s: float = 0.2,
        w_wv: float = 2.0,
        w_cv: float = 0.5,
        **_ignored,
    ):
        if teacher is None:
            raise ValueError("dtokd needs a teacher")
        if balancer not in BALANCERS:
            raise ValueError(f"unknown balancer {balancer!r} (expected one of {', '.join(BALANCERS)})")
        if views not in ("single", "crld"):
            raise ValueError(f"unknown views {views!r} (expected 'single' or 'crld')")
        objectives = ("task",) + (("kl",) if kl_loss else ()) + (("feat",) if feature_loss else ())
        if len(objectives) < 2:
            raise ValueError("dtokd needs a distillation objective next to the task (kl_loss or feature_loss)")
        if balancer == "exact" and len(objectives) != 2:
            raise ValueError(
                f"the exact balancer takes two objectives, not {len(objectives)} ({', '.join(objectives)})"
            )
        if views == "crld" and not kl_loss:
            raise ValueError("views 'crld' feed the kl objective (CRLD's consistency terms): kl_loss must be true")
        super().__init__(student, teacher)
        self.views = views
        self.objectives = objectives
        self.balancer = balancer
        self.T, self.clip_norm = float(T), float(clip_norm)
        self.tau_w, self.tau_s, self.w_wv, self.w_cv = float(tau_w), float(tau_s), float(w_wv), float(w_cv)
        self.diagnostics_every = int(log_every)
        self.projector = None
        if feature_loss:
            d_s, self.d_t = feature_dim(student), feature_dim(teacher)
            # matrix_exp, not the default householder map for non-square weights: householder
            # multiplies by int(diagonal of the stored matrix), which weight decay turns from 1 to
            # 0.999... and so to a zero projector after one AdamW step.
            self.projector = parametrizations.orthogonal(
                nn.Linear(d_s, self.d_t, bias=False), orthogonal_map="matrix_exp"
            )
        self.weights = ObjectiveWeights(len(objectives), weight_lr, weight_decay)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student] + ([self.projector] if self.projector is not None else []) + [self.weights]

    # ---- objectives

    def targets(self, batch: Batch) -> Batch:
        with torch.no_grad():
            x = batch["image"] if self.views == "single" else torch.cat([batch["image"], batch["image_strong"]])
            if self.projector is not None:
                f, z = features_and_logits(self.teacher, x)
                out = {"t_logits": z.float(), "t_features": f.float()}
            else:
                out = {"t_logits": self.teacher(x).float()}
        if self.views == "single":
            return out
        split = {}
        for k, v in out.items():
            split[k], split[f"{k}_strong"] = v.chunk(2)
        return split

    def _student(self, x: torch.Tensor):
        if self.projector is None:
            return None, self.student(x).float()
        f, z = features_and_logits(self.student, x)
        return f, z.float()

    def _feature_loss(self, f_student: torch.Tensor, f_teacher: torch.Tensor) -> torch.Tensor:
        # fp32: the orthogonal parametrisation and a regression target are not for bf16.
        with torch.autocast(device_type=f_student.device.type, enabled=False):
            target = F.layer_norm(f_teacher.float(), (self.d_t,))
            return F.smooth_l1_loss(self.projector(f_student.float()), target)

    def objective_losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({objective: loss}, weak-view student logits), teacher outputs taken from the batch when present."""
        b = self.with_targets(batch)
        y = b["label"]
        f_w, z_w = self._student(b["image"])
        if self.views == "crld":
            f_s, z_s = self._student(b["image_strong"])
            out = {"task": F.cross_entropy(z_w, y) + F.cross_entropy(z_s, y)}
            within, cross = consistency_losses(
                b["t_logits"], b["t_logits_strong"], z_w, z_s, self.T, self.tau_w, self.tau_s
            )
            out["kl"] = self.w_wv * within + self.w_cv * cross
            if self.projector is not None:
                out["feat"] = 0.5 * (
                    self._feature_loss(f_w, b["t_features"]) + self._feature_loss(f_s, b["t_features_strong"])
                )
            return out, z_w
        out = {"task": F.cross_entropy(z_w, y)}
        if "kl" in self.objectives:
            out["kl"] = kd_loss(z_w, b["t_logits"], self.T)
        if self.projector is not None:
            out["feat"] = self._feature_loss(f_w, b["t_features"])
        return out, z_w

    def forward(self, batch: Batch):
        objectives, logits = self.objective_losses(batch)
        # "total" is the current weighting of the objectives (what the loop logs); the update
        # itself is step()'s, not a backward on this sum.
        total = sum(self.weights.pi[i] * objectives[k] for i, k in enumerate(self.objectives))
        return {**objectives, "total": total}, logits

    # ---- update

    def _stack(self, losses) -> torch.Tensor:
        return torch.stack([losses[k] for k in self.objectives])

    def _clip(self) -> None:
        if self.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters_to_train(), self.clip_norm)

    def step(self, fns: StepFunctions, batch: Batch, opt: torch.optim.Optimizer):
        # Clones: with CUDA graphs a compiled call may reuse the memory of an earlier call's outputs.
        b = {**batch, **{k: v.clone() for k, v in fns.targets(batch).items()}}
        if self.balancer == "exact":
            return self._exact_step(fns, b, opt)
        losses, logits = fns.forward(b)
        now = self._stack(losses)
        seen = _mean_over_ranks(now.detach().clone(), fns.world)
        opt.zero_grad(set_to_none=True)
        (self.weights.famo_weights(seen) * now).sum().backward()
        self._clip()
        opt.step()
        named, logits = detached(losses), logits.detach().clone()
        with torch.no_grad(), running_stats_frozen(self.student):
            after, _ = fns.forward(b)
            after = _mean_over_ranks(self._stack(after).detach().clone(), fns.world)
        self.weights.famo_update(seen, after)
        return named, logits

    def _exact_step(self, fns: StepFunctions, b: Batch, opt: torch.optim.Optimizer):
        losses, logits = fns.forward(b)
        params = self.parameters_to_train()
        first, second = self.objectives
        g1 = torch.autograd.grad(losses[first], params, retain_graph=True, allow_unused=True)
        g2 = torch.autograd.grad(losses[second], params, allow_unused=True)
        s1, s2 = 1.0 / (losses[first].detach() + _EPS), 1.0 / (losses[second].detach() + _EPS)
        g1 = [None if g is None else g * s1 for g in g1]  # log-loss gradients: grad L / L
        g2 = [None if g is None else g * s2 for g in g2]
        v1, v2 = _flat(g1, params), _flat(g2, params)
        pi1, pi2 = exact_pair_weights(v1 @ v1, v1 @ v2, v2 @ v2)
        opt.zero_grad(set_to_none=True)
        for p, a, c in zip(params, g1, g2, strict=True):
            a = torch.zeros_like(p) if a is None else a
            c = torch.zeros_like(p) if c is None else c
            p.grad = pi1 * a + pi2 * c
        self._clip()
        opt.step()
        self.weights.pi.copy_(torch.stack([pi1, pi2]))
        return detached(losses), logits.detach()

    # ---- diagnostics (section 3.2)

    def diagnose(self, batch: Batch) -> dict[str, torch.Tensor]:
        shared = [p for p in self.student.parameters() if p.requires_grad]
        b = self.with_targets(batch)
        with running_stats_frozen(self.student):
            objectives, _ = self.objective_losses(b)
        grads = {}
        for i, k in enumerate(self.objectives):
            g = torch.autograd.grad(objectives[k], shared, retain_graph=i < len(self.objectives) - 1, allow_unused=True)
            grads[k] = _flat(g, shared).float()
        task = grads["task"]
        task_norm = task.norm()
        out = {f"pi_{k}": self.weights.pi[i].detach().clone() for i, k in enumerate(self.objectives)}
        for k in self.objectives[1:]:
            inner = grads[k] @ task
            norm = grads[k].norm()
            out[f"inner_{k}"] = inner
            out[f"cosine_{k}"] = inner / (norm * task_norm).clamp(min=1e-12)
            out[f"norm_ratio_{k}"] = norm / task_norm.clamp(min=1e-12)
        if self.views == "crld":
            out.update(mask_rates(b["t_logits"], b["t_logits_strong"], self.tau_w, self.tau_s))
        return out
