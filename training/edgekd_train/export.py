"""Export the eval-mode student to ONNX with its card and reference tensors.

Only ``distiller.student`` is exported (methods.md section 0): teachers, projectors and other
training-only modules cannot reach the graph. Batch is static (1): the edge runtime feeds one
frame at a time and tract optimises best with fixed shapes.
"""

from __future__ import annotations

import copy
import datetime as dt
import tomllib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .card import find_shared_file, presence_inputs, write_card
from .data.resample import RESAMPLE
from .models import input_names

PRESENT_SUFFIX = "_present"

PARITY_RELPATH = Path("docs") / "parity.toml"


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree by more than the tolerance."""


Feeds = dict[str, np.ndarray]  # graph input name -> float32 tensor with the batch dimension of 1


def _eval_copy(student: nn.Module) -> nn.Module:
    # A CPU fp32 copy: export must not depend on the training device, AMP or channels_last.
    return copy.deepcopy(student).cpu().float().to(memory_format=torch.contiguous_format).eval()


def export_onnx(student: nn.Module, shapes: dict[str, tuple[int, ...]], path: Path, opset: int = 17) -> None:
    """One ONNX input per entry of ``input_names(student)`` (each card input, then the presence
    inputs of a learned-token model), shaped as ``shapes`` says, and one output, ``logits``."""
    names = input_names(student)
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ValueError(f"no export shape for the student's inputs {missing} (have {sorted(shapes)})")
    torch.onnx.export(
        _eval_copy(student),
        tuple(torch.ones(shapes[n]) if n.endswith(PRESENT_SUFFIX) else torch.zeros(shapes[n]) for n in names),
        str(path),
        input_names=list(names),
        output_names=["logits"],
        opset_version=opset,
        dynamo=False,
        do_constant_folding=True,
    )


def reference_file(out_dir: Path, k: int, name: str, n_inputs: int) -> Path:
    """Where sample k's tensor for graph input ``name`` is kept: ``input_k.npy`` for a one-input
    model, ``input_k.<name>.npy`` for each input of a model with several (what `edge-kd
    parity` reads)."""
    return out_dir / (f"input_{k}.npy" if n_inputs == 1 else f"input_{k}.{name}.npy")


def reference_tensors(student: nn.Module, samples: list[Feeds], out_dir: Path) -> list[tuple[Feeds, np.ndarray]]:
    """For each sample (a tensor per graph input, batch 1), its input files (:func:`reference_file`)
    and ``output_k.npy`` (fp32 eval logits [1,K]), all C-contiguous float32."""
    model = _eval_copy(student)
    names = input_names(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    with torch.no_grad():
        for k, sample in enumerate(samples):
            feeds = {n: np.ascontiguousarray(sample[n].astype(np.float32)) for n in names}
            yo = np.ascontiguousarray(model(*(torch.from_numpy(feeds[n]) for n in names)).numpy().astype(np.float32))
            for n in names:
                np.save(reference_file(out_dir, k, n, len(names)), feeds[n])
            np.save(out_dir / f"output_{k}.npy", yo)
            pairs.append((feeds, yo))
    return pairs


@lru_cache(maxsize=1)
def parity_tolerance() -> float:
    """The largest abs diff from the reference an engine may show: docs/parity.toml's
    ``max_abs_diff``, the one definition the Rust runtime embeds too ($EDGEKD_PARITY_FILE
    overrides where it is read from)."""
    path = find_shared_file(PARITY_RELPATH, "EDGEKD_PARITY_FILE", "parity tolerance")
    with open(path, "rb") as f:
        table = tomllib.load(f)
    tol = table.get("max_abs_diff")
    if set(table) != {"max_abs_diff"} or not isinstance(tol, float) or not 0 < tol < 1:
        raise ValueError(f"{path}: expected exactly `max_abs_diff = <float in (0, 1)>`, got {table}")
    return tol


def verify_onnxruntime(path: Path, pairs, tol: float | None = None) -> float | None:
    """Max abs diff between onnxruntime and the reference outputs; None when ORT is absent.
    ``tol`` defaults to :func:`parity_tolerance`."""
    tol = parity_tolerance() if tol is None else tol
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for feeds, yo in pairs:
        got = sess.run(["logits"], feeds)[0]
        worst = max(worst, float(np.abs(got - yo).max()))
    if worst > tol:
        raise ParityError(f"{path}: onnxruntime differs from PyTorch by {worst:.3g} (> {tol:g})")
    return worst


def card_input(
    name: str, shape, color: str, scale: float, mean, std, optional: bool = False, modality: str | None = None
) -> dict:
    """One entry of ``card["inputs"]``: the tensor the graph takes and how a frame becomes it."""
    return {
        "name": name,
        "modality": modality or ("camera" if name == "image" else name),
        "shape": list(shape),
        "layout": "NCHW",
        "color": color,
        "resize": "stretch",
        "resample": RESAMPLE,
        "scale": scale,
        "mean": list(mean),
        "std": list(std),
        "optional": optional,
    }


def build_card(
    *,
    name: str,
    labels: list[str],
    inputs: list[dict],
    calibration: dict,
    method: str,
    teachers: list[str],
    dataset: str,
    metrics: dict,
    command: str,
    learned_token: bool = False,
) -> dict:
    """``learned_token``: the graph takes a ``<name>_present`` input per optional input and swaps
    in a learned token where it is 0; otherwise a missing optional input is zero-filled."""
    return {
        "schema": 1,
        "name": name,
        "task": "classification",
        "labels": list(labels),
        "inputs": inputs,
        "missing_modality": {"policy": "learned-token"}
        if learned_token
        else {"policy": "zero-fill", "mask_input": None},
        "output": "logits",
        "calibration": calibration,
        "provenance": {
            "method": method,
            "teachers": list(teachers),
            "dataset": dataset,
            # The schema allows numbers only: unknown metrics are left out rather than null.
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v == v},
            "edge_kd_version": __version__,
            "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            "command": command,
        },
    }


def export_student(
    student: nn.Module, card: dict, samples: list[Feeds], out: Path, opset: int = 17, filename: str = "student.onnx"
) -> dict:
    """Write OUT/<filename> (+card) and OUT/reference/; returns {"onnx", "onnx_bytes", "max_abs_diff"}.
    ``samples`` are the reference inputs, a tensor per graph input each."""
    path = out / filename
    shapes = {i["name"]: tuple(i["shape"]) for i in card["inputs"]}
    batch = {f"{i['name']}{PRESENT_SUFFIX}": i["shape"][0] for i in card["inputs"]}
    shapes.update({p: (batch[p],) for p in presence_inputs(card)})
    export_onnx(student, shapes, path, opset)
    write_card(path, card)
    pairs = reference_tensors(student, samples, out / "reference")
    diff = verify_onnxruntime(path, pairs)
    return {"onnx": str(path), "onnx_bytes": path.stat().st_size, "max_abs_diff": diff}
