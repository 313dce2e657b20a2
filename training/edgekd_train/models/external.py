"""Teachers from outside the registry: TorchScript files and timm models with local weights.

Nothing here downloads: timm models are built with ``pretrained=False`` and their weights come
from a file the user names.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


class ExternalModelError(ValueError):
    """A teacher that cannot be loaded; the message says which file or package."""


def load_state(model: nn.Module, path: str) -> None:
    """Load a state_dict file (or an edge-kd checkpoint holding one under "model") into ``model``."""
    p = Path(path)
    if not p.is_file():
        raise ExternalModelError(f"{path}: no such weights file")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ExternalModelError(f"{path}: weights do not fit the model: {str(e).splitlines()[0]}") from None


def load_torchscript(path: str) -> nn.Module:
    p = Path(path)
    if not p.is_file():
        raise ExternalModelError(f"{path}: no such TorchScript file")
    try:
        return torch.jit.load(str(p), map_location="cpu")
    except RuntimeError as e:
        raise ExternalModelError(f"{path}: not a TorchScript file: {str(e).splitlines()[0]}") from None


def create_timm(name: str, num_classes: int, in_chans: int, weights: str | None) -> nn.Module:
    try:
        import timm  # lazy: timm is optional and heavy
    except ImportError:
        raise ExternalModelError(
            f"teacher 'timm:{name}' needs the timm package: pip install timm"
        ) from None
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    except Exception as e:  # timm raises RuntimeError for unknown names
        raise ExternalModelError(f"timm:{name}: {e}") from None
    if not weights:
        raise ExternalModelError(f"timm:{name}: a local weights file is required ([teacher].weights)")
    load_state(model, weights)
    return model
