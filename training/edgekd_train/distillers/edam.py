"""EDAM, entropy distillation in attention maps (methods.md section 5.4):

L_EDAM(l) = -(1 / (B*H*Nq)) sum_{b,h,i,j} A^T_l[b,h,i,j] * log(A^S_l[b,h,i,j] + 1e-8)
attn      = mean over the chosen layer pairs l
total     = CE + beta * attn + alpha * KD_T

The teacher's map of a pair is typically the cross-attention of the student's modality onto the
others ("rgb.cross1"), the student's its self-attention ("rgb.self1"). The teacher sees every
modality of the batch, the student only its own ``input_names``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import inputs_of
from .base import Batch, Distiller
from .kd import kd_loss

LayerPairs = list[tuple[str, str]]


def _group_heads(a: torch.Tensor, groups: int) -> torch.Tensor:
    b, h, nq, nk = a.shape
    return a.reshape(b, groups, h // groups, nq, nk).mean(dim=2)


def _resample_keys(a: torch.Tensor, nk: int) -> torch.Tensor:
    """Linearly resample rows of attention probabilities to ``nk`` keys and renormalise; square
    token grids are resampled as grids (bilinear), so neighbouring patches stay neighbours."""
    b, h, nq, n = a.shape
    side, new_side = math.isqrt(n), math.isqrt(nk)
    if side * side == n and new_side * new_side == nk:
        grid = a.reshape(b * h * nq, 1, side, side)
        out = F.interpolate(grid, size=(new_side, new_side), mode="bilinear", align_corners=False)
    else:
        out = F.interpolate(a.reshape(b * h * nq, 1, n), size=nk, mode="linear", align_corners=False)
    out = out.reshape(b, h, nq, nk)
    return out / out.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def align_maps(teacher: torch.Tensor, student: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring a teacher and a student map (B, H, Nq, Nk) to one shape: heads averaged within
    gcd(H_t, H_s) groups on both sides (all heads when the counts are coprime), teacher rows
    resampled along the key axis when key counts differ."""
    if teacher.shape[2] != student.shape[2]:
        raise ValueError(
            f"teacher and student maps have {teacher.shape[2]} and {student.shape[2]} query tokens; "
            "pair layers whose queries come from the same token grid"
        )
    groups = math.gcd(teacher.shape[1], student.shape[1])
    teacher, student = _group_heads(teacher, groups), _group_heads(student, groups)
    if teacher.shape[3] != student.shape[3]:
        teacher = _resample_keys(teacher, student.shape[3])
    return teacher, student


def attention_cross_entropy(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """methods.md 5.4 for one layer pair; the teacher map is detached."""
    t, s = align_maps(teacher.detach().float(), student.float())
    return -(t * torch.log(s + 1e-8)).sum(dim=-1).mean()


def check_layer_pairs(layers: Sequence[Sequence[str]] | None) -> LayerPairs | None:
    if layers is None:
        return None
    pairs = [tuple(p) for p in layers]
    if not pairs or any(len(p) != 2 or not all(isinstance(n, str) for n in p) for p in pairs):
        raise ValueError(f"layers must be a non-empty list of [teacher_layer, student_layer] names, got {layers!r}")
    return pairs  # type: ignore[return-value]


def default_pairs(teacher_maps: dict[str, torch.Tensor], student_maps: dict[str, torch.Tensor]) -> LayerPairs:
    """Every student self-attention "<m>.self<l>" with the teacher's cross-attention "<m>.cross<l>"
    of the same stream and layer (all layers, methods.md 5.6)."""
    pairs = [(s.replace(".self", ".cross"), s) for s in student_maps if s.replace(".self", ".cross") in teacher_maps]
    if not pairs:
        raise ValueError(
            f"no default EDAM layer pairs between teacher maps {sorted(teacher_maps)} and student maps "
            f"{sorted(student_maps)}; set layers = [[teacher_layer, student_layer], ...]"
        )
    return pairs


class EDAMLoss(nn.Module):
    """The attention term alone (no parameters), shared by EDAM and EDAM+CRD."""

    def __init__(self, layers: Sequence[Sequence[str]] | None = None):
        super().__init__()
        self.layers = check_layer_pairs(layers)

    def forward(self, teacher_maps: dict[str, torch.Tensor], student_maps: dict[str, torch.Tensor]) -> torch.Tensor:
        pairs = self.layers or default_pairs(teacher_maps, student_maps)
        missing = [t for t, _ in pairs if t not in teacher_maps] + [s for _, s in pairs if s not in student_maps]
        if missing:
            raise ValueError(
                f"layers names maps {missing} the models do not have (teacher: {sorted(teacher_maps)}, "
                f"student: {sorted(student_maps)})"
            )
        terms = [attention_cross_entropy(teacher_maps[t], student_maps[s]) for t, s in pairs]
        return torch.stack(terms).mean()


def require_attention(model: nn.Module, role: str) -> None:
    if not hasattr(model, "forward_attention"):
        raise ValueError(f"the {role} {type(model).__name__} returns no attention maps (expected a multimodal model)")


class EDAMDistiller(Distiller):
    needs = frozenset({"logits", "attention"})
    needs_teacher = True

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        layers: Sequence[Sequence[str]] | None = None,
        beta: float = 1.0,
        alpha: float = 0.0,
        T: float = 4.0,
        **_ignored,
    ):
        if teacher is None:
            raise ValueError("edam needs a teacher")
        require_attention(teacher, "teacher")
        require_attention(student, "student")
        super().__init__(student, teacher)
        self.edam = EDAMLoss(layers)
        self.beta, self.alpha, self.T = float(beta), float(alpha), float(T)

    def forward(self, batch: Batch):
        with torch.no_grad():
            zt, maps_t = self.teacher.forward_attention(*inputs_of(self.teacher, batch))
        zs, maps_s = self.student.forward_attention(*inputs_of(self.student, batch))
        zs = zs.float()
        ce = F.cross_entropy(zs, batch["label"])
        attn = self.edam(maps_t, maps_s)
        kd = kd_loss(zs, zt.float(), self.T)
        total = ce + self.beta * attn + self.alpha * kd
        return {"ce": ce, "attn": attn, "kd": kd, "total": total}, zs
