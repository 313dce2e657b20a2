"""Distiller registry, keyed by ``[distill].method``. Each method is one file."""

from __future__ import annotations

from .base import Batch, Distiller, StepFunctions
from .crld import CRLDDistiller
from .dtokd import DTOKDDistiller
from .kd import KDDistiller
from .scratch import ScratchDistiller

DISTILLERS: dict[str, type[Distiller]] = {
    "scratch": ScratchDistiller,
    "kd": KDDistiller,
    "crld": CRLDDistiller,
    "dtokd": DTOKDDistiller,
}


def create_distiller(method: str, student, teacher=None, **params) -> Distiller:
    if method not in DISTILLERS:
        raise ValueError(f"unknown method {method!r} (expected one of {', '.join(sorted(DISTILLERS))})")
    return DISTILLERS[method](student, teacher, **params)


__all__ = [
    "Batch",
    "Distiller",
    "DISTILLERS",
    "StepFunctions",
    "create_distiller",
    "CRLDDistiller",
    "DTOKDDistiller",
    "KDDistiller",
    "ScratchDistiller",
]
