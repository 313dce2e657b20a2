"""Common interface of all distillation methods (methods.md).

A Distiller owns the student, an optional frozen teacher and any training-only modules
(projectors, adapters...). The training loop only sees this interface:

* ``forward(batch)`` -> ``(losses, student_logits)``; ``losses`` holds named terms and "total".
  Being ``forward`` lets DDP wrap the whole distiller (teacher params need no grad, so DDP
  ignores them).
* ``losses(batch)`` -> the dict alone.
* ``trainable_modules()`` -> the student plus training-only modules (what the optimiser sees).
* ``needs`` -> what the method needs from the teacher, e.g. {"logits"}.

Export takes ``distiller.student`` only, so nothing training-only can leak into the ONNX graph.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
import torch.nn as nn

Batch = dict[str, torch.Tensor]  # {"image": float (B,C,H,W) normalised, "label": int64 (B,)}


class Distiller(nn.Module, abc.ABC):
    needs: ClassVar[frozenset[str]] = frozenset()
    needs_teacher: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            # Frozen for good: no grads, eval mode (BN statistics fixed) whatever train() says.
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student]

    def parameters_to_train(self) -> list[nn.Parameter]:
        return [p for m in self.trainable_modules() for p in m.parameters() if p.requires_grad]

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        return self.teacher(x).float()

    @abc.abstractmethod
    def forward(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Each method computes its named loss terms and the student's logits."""

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.forward(batch)[0]
