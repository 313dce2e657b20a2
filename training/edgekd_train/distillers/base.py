"""Common interface of all distillation methods (methods.md).

A Distiller owns the student, an optional frozen teacher and any training-only modules
(projectors, adapters, objective weights...). The training loop only sees this interface:

* ``forward(batch)`` -> ``(losses, student_logits)``; ``losses`` holds named terms and "total".
  Being ``forward`` lets DDP wrap the whole distiller (teacher params need no grad, so DDP
  ignores them) and torch.compile trace it.
* ``losses(batch)`` -> the dict alone.
* ``step(fns, batch, opt)`` -> one optimisation step, returning the named losses (they reach the
  step and epoch events) and the logits. The default is backward on "total" and
  ``opt.step()``; a method whose update is not "minimise one scalar" (DTO-KD's gradient
  balancing) overrides it. ``fns`` carries the loop's DDP-wrapped, maybe compiled, autocast
  forward, so an override keeps DDP and the fast path.
* ``targets(batch)`` -> what the frozen teacher says about the batch (keys ``t_*``). ``forward``
  computes them itself unless the batch already carries them: a step that runs several forwards
  on one batch computes them once.
* ``views`` -> the input views the method trains on (data/views.py): "single" or "crld".
* ``diagnose(batch)`` -> named scalar tensors, every ``diagnostics_every`` steps (0: never).
* ``trainable_modules()`` -> the student plus training-only modules (checkpointed; the optimiser
  takes their parameters).
* ``needs`` -> what the method needs from the teacher, e.g. {"logits"}.

Export takes ``distiller.student`` only, so nothing training-only can leak into the ONNX graph.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

Batch = dict[str, torch.Tensor]  # {"image": float (B,C,H,W) normalised, "label": int64 (B,), ...}
Losses = dict[str, torch.Tensor]


@dataclass
class StepFunctions:
    """What the loop lends a step: callables that already carry DDP, torch.compile and autocast."""

    forward: Callable[[Batch], tuple[Losses, torch.Tensor]]
    targets: Callable[[Batch], Batch]
    world: int = 1


@contextlib.contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Train-mode batch norm (batch statistics) that leaves the running statistics alone.

    For the extra forwards of a step (FAMO's post-step losses, gradient diagnostics): they must
    normalise like the real forward, but must not count the batch a second time in the running
    averages the exported student will use."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def detached(losses: Losses) -> Losses:
    # Clones: with CUDA graphs a compiled call may reuse the memory of an earlier call's outputs.
    return {k: v.detach().clone() for k, v in losses.items()}


class Distiller(nn.Module, abc.ABC):
    needs: ClassVar[frozenset[str]] = frozenset()
    needs_teacher: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.views = "single"
        self.diagnostics_every = 0
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

    def targets(self, batch: Batch) -> Batch:
        return {}

    def with_targets(self, batch: Batch) -> Batch:
        if any(k.startswith("t_") for k in batch):
            return batch
        return {**batch, **self.targets(batch)}

    @abc.abstractmethod
    def forward(self, batch: Batch) -> tuple[Losses, torch.Tensor]:
        """Each method computes its named loss terms and the student's logits."""

    def losses(self, batch: Batch) -> Losses:
        return self.forward(batch)[0]

    def step(self, fns: StepFunctions, batch: Batch, opt: torch.optim.Optimizer) -> tuple[Losses, torch.Tensor]:
        """One update; returns the batch's named losses (with "total") and student logits, detached."""
        losses, logits = fns.forward(batch)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        return detached(losses), logits.detach()

    def diagnose(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {}
