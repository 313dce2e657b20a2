"""Model registry (timm-like): configs name models, this module builds them.

    @register_model("cnn-18k")
    def cnn_18k(num_classes: int, in_chans: int) -> nn.Module: ...

    model = create_model("cnn-18k", num_classes=10, in_chans=1)

Besides registered names, two prefixes reach external teachers (see ``external.py``):
``torchscript:PATH`` and ``timm:NAME`` (with a local weights file).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
EXTERNAL_PREFIXES = ("torchscript:", "timm:")


def register_model(name: str):
    """Decorator: register a builder ``fn(num_classes, in_chans) -> nn.Module`` under ``name``."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def check_model_name(name: str) -> str | None:
    """None when ``name`` can be built, else why not (used by config validation)."""
    if name.startswith(EXTERNAL_PREFIXES):
        return None if name.split(":", 1)[1] else f"{name!r}: empty name after the prefix"
    if name in _REGISTRY:
        return None
    return f"unknown model {name!r} (expected one of {', '.join(list_models())}, 'torchscript:PATH' or 'timm:NAME')"


def create_model(
    name: str,
    num_classes: int,
    in_chans: int,
    weights: str | None = None,
    new_head: bool = False,
    inputs: Sequence[tuple[str, int, bool]] | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """Build model ``name``; ``weights`` (a state_dict file) is loaded when given. ``new_head``
    lets a timm model start from a backbone trained on other classes or channels.

    ``inputs`` (``(name, channels, optional)`` per card input) builds the model for those inputs:
    a multimodal model gets a stream each (and presence inputs where it takes them); a model of
    one image gets the one input's channels and is told its name (``input_names``), so
    ``inputs_of`` feeds it from the batch."""
    from . import external

    if inputs is not None and not _takes_inputs(name):
        if len(inputs) != 1:
            raise ValueError(f"{name} takes one image, not the {len(inputs)} inputs {[i[0] for i in inputs]}")
        (input_name, in_chans, optional) = inputs[0]
        if optional:
            raise ValueError(f"{name} cannot run without its one input {input_name!r} (expected it required)")
    if name.startswith("torchscript:"):
        model = external.load_torchscript(name.split(":", 1)[1])
    elif name.startswith("timm:"):
        model = external.create_timm(name.split(":", 1)[1], num_classes, in_chans, weights, new_head)
    else:
        why = check_model_name(name)
        if why:
            raise ValueError(why)
        kwargs = {"inputs": inputs} if inputs is not None and _takes_inputs(name) else {}
        if image_size is not None and _takes_inputs(name):
            kwargs["image_size"] = image_size
        model = _REGISTRY[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
        if weights:
            external.load_state(model, weights)
    if inputs is not None and not hasattr(model, "input_names"):
        model.input_names = (inputs[0][0],)
    return model


def _takes_inputs(name: str) -> bool:
    """Whether registered model ``name`` is built per card input (the multimodal ones)."""
    builder = _REGISTRY.get(name)
    return builder is not None and "inputs" in inspect.signature(builder).parameters


def attention_models() -> list[str]:
    """The registered models that return attention maps (``forward_attention``), which EDAM needs:
    the multimodal transformers, the ones built per card input."""
    return [name for name in list_models() if _takes_inputs(name)]


def has_features(model: nn.Module) -> bool:
    """Whether ``features_and_logits`` can read pooled features from ``model`` (TorchScript
    teachers expose their logits only)."""
    return hasattr(model, "forward_pooled") or (hasattr(model, "forward_features") and hasattr(model, "forward_head"))


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled features of ``features_and_logits`` (registered models and timm agree
    on ``num_features``)."""
    if not has_features(model) or not isinstance(getattr(model, "num_features", None), int):
        raise ValueError(f"{type(model).__name__} exposes no pooled features (expected a registered or timm model)")
    return model.num_features


def input_names(model: nn.Module) -> tuple[str, ...]:
    """The batch keys ``model`` takes, in its positional order: ``input_names`` where the model
    (or ``create_model``) names them, else the one "image"."""
    return tuple(getattr(model, "input_names", ("image",)))


def inputs_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The batch tensors ``model`` takes, in its positional order (:func:`input_names`)."""
    return tuple(batch[n] for n in input_names(model))


def features_and_logits(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]):
    """(pooled penultimate features (B, D), logits) in one forward; ``x`` is one input tensor or
    the tuple ``inputs_of`` gives."""
    if isinstance(x, tuple) and len(x) == 1:
        x = x[0]
    if isinstance(x, tuple):
        if not hasattr(model, "forward_pooled"):
            raise ValueError(f"{type(model).__name__} takes one input tensor, got {len(x)}")
        return model.forward_pooled(*x)
    if hasattr(model, "forward_pooled"):
        return model.forward_pooled(x)
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):  # timm
        f = model.forward_head(model.forward_features(x), pre_logits=True)
        return f, model.get_classifier()(f)
    raise ValueError(f"{type(model).__name__} exposes no pooled features (expected a registered or timm model)")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Populate the registry (import side effects are the registration mechanism, as in timm).
from . import multimodal, students, teachers  # noqa: E402,F401
