"""Baseline: the student trained alone with cross-entropy (also used to train teachers)."""

from __future__ import annotations

import torch.nn.functional as F

from ..models import inputs_of
from .base import Batch, Distiller


class ScratchDistiller(Distiller):
    needs = frozenset()
    needs_teacher = False

    def __init__(self, student, teacher=None, **_ignored):
        super().__init__(student, None)  # never holds a teacher: nothing to freeze or carry

    def forward(self, batch: Batch):
        logits = self.student(*inputs_of(self.student, batch)).float()
        ce = F.cross_entropy(logits, batch["label"])
        return {"ce": ce, "total": ce}, logits
