"""CRLD: cross-view consistency regularisation for KD, exactly as methods.md section 4.3.

Per sample, with teacher logits detached and KL_T(a||b) = T^2 * sum_c p^T(a)_c log(p^T(a)_c / p^T(b)_c):

    m_w = 1[max softmax(z_t^w) >= tau_w]      m_s = 1[max softmax(z_t^s) >= tau_s]     (T = 1)
    L_CE = w_ce * (CE(z_s^w, y) + CE(z_s^s, y))
    L_wv = w_wv * mean_i[m_w * (KL_T(z_t^w || z_s^w) + KL_T(z_t^s || z_s^s))]            within-view
    L_cv = w_cv * mean_i[m_s * (KL_T(z_t^w || z_s^s) + KL_T(z_t^s || z_s^w))]            cross-view
    total = L_CE + L_wv + L_cv

The mean runs over the whole batch (masked samples count as 0, no renormalisation). The student
sees the two views in two forwards so its batch norm sees each view separately; the teacher is in
eval mode (per-sample), so one forward of both views together gives the same logits for less
launch overhead. Training accuracy is read on the weak view. Every ``log_every`` steps
``diagnose`` reports the share of samples each gate lets through (``mask_rates``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, Distiller


def kl_per_sample(teacher_logits: torch.Tensor, student_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(p^T(teacher) || p^T(student)) for each sample, shape (B,)."""
    log_pt = F.log_softmax(teacher_logits.float() / T, dim=1)
    log_ps = F.log_softmax(student_logits.float() / T, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(1) * (T * T)


def confidence_masks(t_weak: torch.Tensor, t_strong: torch.Tensor, tau_w: float, tau_s: float):
    """(m_w, m_s) as float (B,): the teacher's top softmax probability (T = 1) on each view
    against its threshold. Float, not bool, so the masks multiply without a host sync."""
    conf_w = F.softmax(t_weak.float(), dim=1).amax(1)
    conf_s = F.softmax(t_strong.float(), dim=1).amax(1)
    return (conf_w >= tau_w).float(), (conf_s >= tau_s).float()


def mask_rates(t_weak: torch.Tensor, t_strong: torch.Tensor, tau_w: float, tau_s: float) -> dict[str, torch.Tensor]:
    """How much of the batch each gate lets through, and the teacher's mean confidence per view:
    with tau_w above what the teacher reaches on weak views, the within-view KL does nothing."""
    m_w, m_s = confidence_masks(t_weak, t_strong, tau_w, tau_s)
    return {
        "mask_weak": m_w.mean(),
        "mask_strong": m_s.mean(),
        "teacher_conf_weak": F.softmax(t_weak.float(), dim=1).amax(1).mean(),
        "teacher_conf_strong": F.softmax(t_strong.float(), dim=1).amax(1).mean(),
    }


def consistency_losses(t_weak, t_strong, s_weak, s_strong, T: float, tau_w: float, tau_s: float):
    """Unweighted (within-view, cross-view) terms of section 4.3."""
    m_w, m_s = confidence_masks(t_weak, t_strong, tau_w, tau_s)
    within = (m_w * (kl_per_sample(t_weak, s_weak, T) + kl_per_sample(t_strong, s_strong, T))).mean()
    cross = (m_s * (kl_per_sample(t_weak, s_strong, T) + kl_per_sample(t_strong, s_weak, T))).mean()
    return within, cross


def teacher_view_logits(distiller: Distiller, batch: Batch) -> Batch:
    """Teacher logits of both views from one forward (eval-mode teacher: samples are independent)."""
    z = distiller.teacher_logits(torch.cat([batch["image"], batch["image_strong"]]))
    weak, strong = z.chunk(2)
    return {"t_logits": weak, "t_logits_strong": strong}


class CRLDDistiller(Distiller):
    needs = frozenset({"logits"})
    needs_teacher = True

    def __init__(
        self,
        student,
        teacher,
        T: float = 4.0,
        tau_w: float = 0.9,
        tau_s: float = 0.2,
        w_ce: float = 1.0,
        w_wv: float = 2.0,
        w_cv: float = 0.5,
        log_every: int = 50,
        **_ignored,
    ):
        if teacher is None:
            raise ValueError("crld needs a teacher")
        super().__init__(student, teacher)
        self.views = "crld"
        self.T, self.tau_w, self.tau_s = float(T), float(tau_w), float(tau_s)
        self.w_ce, self.w_wv, self.w_cv = float(w_ce), float(w_wv), float(w_cv)
        self.diagnostics_every = int(log_every)

    def targets(self, batch: Batch) -> Batch:
        return teacher_view_logits(self, batch)

    def forward(self, batch: Batch):
        b = self.with_targets(batch)
        y = b["label"]
        s_weak = self.student(b["image"]).float()
        s_strong = self.student(b["image_strong"]).float()
        ce = F.cross_entropy(s_weak, y) + F.cross_entropy(s_strong, y)
        within, cross = consistency_losses(
            b["t_logits"], b["t_logits_strong"], s_weak, s_strong, self.T, self.tau_w, self.tau_s
        )
        terms = {"ce": self.w_ce * ce, "within_view": self.w_wv * within, "cross_view": self.w_cv * cross}
        return {**terms, "total": terms["ce"] + terms["within_view"] + terms["cross_view"]}, s_weak

    def diagnose(self, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            t = self.with_targets(batch)
            return mask_rates(t["t_logits"], t["t_logits_strong"], self.tau_w, self.tau_s)
