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


def read_state(path: str) -> dict:
    """A state_dict from a file (or from an edge-kd checkpoint holding one under "model")."""
    p = Path(path)
    if not p.is_file():
        raise ExternalModelError(f"{path}: no such weights file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of every kind: the file is not a weights file
        raise ExternalModelError(f"{path}: not a PyTorch weights file: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ExternalModelError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    return state


def load_state(model: nn.Module, path: str) -> None:
    """Load a state_dict file into ``model``; every tensor must fit."""
    try:
        model.load_state_dict(read_state(path))
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


def create_timm(name: str, num_classes: int, in_chans: int, weights: str | None, new_head: bool = False) -> nn.Module:
    """timm model ``name`` with the weights of a local file. With ``new_head`` the file may be a
    backbone for other data (an ImageNet checkpoint): its classifier is dropped for a fresh one with
    ``num_classes`` outputs and its first convolution is adapted to ``in_chans``, as timm does for
    its own pretrained weights; the caller then fine-tunes."""
    try:
        import timm  # lazy: timm is optional and heavy
    except ImportError:
        raise ExternalModelError(f"teacher 'timm:{name}' needs the timm package: pip install timm") from None
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    except Exception as e:  # timm raises RuntimeError for unknown names
        raise ExternalModelError(f"timm:{name}: {e}") from None
    if not weights:
        raise ExternalModelError(f"timm:{name}: a local weights file is required ([teacher].weights)")
    state = read_state(weights)
    own = model.state_dict()
    classifier = _prefixes(model.pretrained_cfg.get("classifier"))
    first_conv = _prefixes(model.pretrained_cfg.get("first_conv"))
    head_misfits = [k for k in own if k.startswith(classifier) and k in state and state[k].shape != own[k].shape]
    if head_misfits and not new_head:
        raise ExternalModelError(
            f"{weights}: the classifier {head_misfits[0]} has shape {tuple(state[head_misfits[0]].shape)}, "
            f"but this data has {num_classes} classes (set [teacher].finetune = true and [teacher].epochs "
            "to train a new head on this data)"
        )
    if new_head:
        from timm.models import adapt_input_conv

        state = {
            k: v for k, v in state.items() if not (k.startswith(classifier) and k in own and v.shape != own[k].shape)
        }
        for k in [k for k in state if k.startswith(first_conv) and k.endswith(".weight") and state[k].ndim == 4]:
            if state[k].shape[1] != in_chans:
                state[k] = adapt_input_conv(in_chans, state[k])
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ExternalModelError(f"{weights}: weights do not fit timm:{name}: {str(e).splitlines()[0]}") from None
    # Only the dropped classifier may be missing; anything else means another architecture.
    missing = [k for k in missing if not (new_head and k.startswith(classifier))]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ExternalModelError(
            f"{weights}: weights do not fit timm:{name} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors, e.g. {what})"
        )
    return model


def _prefixes(names) -> tuple[str, ...]:
    """timm's pretrained_cfg names a module (or a list of them); match its tensors by prefix."""
    if not names:
        return ()  # str.startswith(()) is False: no tensor matches
    names = [names] if isinstance(names, str) else list(names)
    return tuple(n + "." for n in names)
