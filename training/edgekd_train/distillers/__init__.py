"""Distiller registry, keyed by ``[distill].method``. Each method is one file."""

from __future__ import annotations

from .base import Batch, Distiller, StepFunctions
from .crd import CRDDistiller, EDAMCRDDistiller
from .crld import CRLDDistiller
from .dtokd import DTOKDDistiller
from .edam import EDAMDistiller
from .kd import KDDistiller
from .scratch import ScratchDistiller

DISTILLERS: dict[str, type[Distiller]] = {
    "scratch": ScratchDistiller,
    "kd": KDDistiller,
    "crld": CRLDDistiller,
    "dtokd": DTOKDDistiller,
    "edam": EDAMDistiller,
    "crd": CRDDistiller,
    "edam+crd": EDAMCRDDistiller,
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
    "CRDDistiller",
    "CRLDDistiller",
    "DTOKDDistiller",
    "EDAMCRDDistiller",
    "EDAMDistiller",
    "KDDistiller",
    "ScratchDistiller",
]
