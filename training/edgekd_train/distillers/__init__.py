"""Distiller registry, keyed by ``[distill].method``. The next methods add one file each."""

from __future__ import annotations

from .base import Batch, Distiller
from .kd import KDDistiller
from .scratch import ScratchDistiller

DISTILLERS: dict[str, type[Distiller]] = {
    "scratch": ScratchDistiller,
    "kd": KDDistiller,
}


def create_distiller(method: str, student, teacher=None, **params) -> Distiller:
    if method not in DISTILLERS:
        raise ValueError(f"unknown method {method!r} (expected one of {', '.join(sorted(DISTILLERS))})")
    return DISTILLERS[method](student, teacher, **params)


__all__ = ["Batch", "Distiller", "DISTILLERS", "create_distiller", "KDDistiller", "ScratchDistiller"]
