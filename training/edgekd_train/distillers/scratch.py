"""Baseline: the student trained alone with cross-entropy (also used to train teachers)."""

from __future__ import annotations

import torch.nn.functional as F

from .base import Batch, Distiller


class ScratchDistiller(Distiller):
    needs = frozenset()
    needs_teacher = False

    def __init__(self, student, teacher=None, **_ignored):
        super().__init__(student, None)  # never holds a teacher: nothing to freeze or carry

    def forward(self, batch: Batch):
        logits = self.student(batch["image"]).float()
        ce = F.cross_entropy(logits, batch["label"])
        return {"ce": ce, "total": ce}, logits
