"""Hinton KD, exactly as methods.md section 0:

L_KD  = T^2 * KL(p^T(z_t) || p^T(z_s)), summed over classes, averaged over the batch
total = (1 - alpha) * CE + alpha * L_KD
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import inputs_of
from .base import Batch, Distiller


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    log_ps = F.log_softmax(student_logits.float() / T, dim=1)
    log_pt = F.log_softmax(teacher_logits.float() / T, dim=1)
    # kl_div(input=log q, target=log p, log_target) = sum p (log p - log q); "batchmean" divides by B.
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * (T * T)


class KDDistiller(Distiller):
    needs = frozenset({"logits"})
    needs_teacher = True

    def __init__(self, student, teacher, T: float = 4.0, alpha: float = 0.9, **_ignored):
        if teacher is None:
            raise ValueError("kd needs a teacher")
        super().__init__(student, teacher)
        self.T = float(T)
        self.alpha = float(alpha)

    def forward(self, batch: Batch):
        with torch.no_grad():
            zt = self.teacher(*inputs_of(self.teacher, batch)).float()
        zs = self.student(*inputs_of(self.student, batch)).float()
        ce = F.cross_entropy(zs, batch["label"])
        kd = kd_loss(zs, zt, self.T)
        return {"ce": ce, "kd": kd, "total": (1.0 - self.alpha) * ce + self.alpha * kd}, zs
