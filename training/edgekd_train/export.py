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
from .card import find_shared_file, write_card
from .data.resample import RESAMPLE

PARITY_RELPATH = Path("docs") / "parity.toml"


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree by more than the tolerance."""


def export_onnx(student: nn.Module, shape: tuple[int, int, int, int], path: Path, opset: int = 17) -> None:
    # A CPU fp32 copy: export must not depend on the training device, AMP or channels_last.
    model = copy.deepcopy(student).cpu().float().to(memory_format=torch.contiguous_format).eval()
    torch.onnx.export(
        model,
        (torch.zeros(shape),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=False,
        do_constant_folding=True,
    )


def reference_tensors(student: nn.Module, images: np.ndarray, out_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """input_k.npy (float32 [1,C,H,W], C-contiguous) and output_k.npy (fp32 eval logits [1,K])."""
    model = copy.deepcopy(student).cpu().float().to(memory_format=torch.contiguous_format).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    with torch.no_grad():
        for k, x in enumerate(images):
            xi = np.ascontiguousarray(x[None].astype(np.float32))
            yo = np.ascontiguousarray(model(torch.from_numpy(xi)).numpy().astype(np.float32))
            np.save(out_dir / f"input_{k}.npy", xi)
            np.save(out_dir / f"output_{k}.npy", yo)
            pairs.append((xi, yo))
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
    for xi, yo in pairs:
        got = sess.run(["logits"], {"image": xi})[0]
        worst = max(worst, float(np.abs(got - yo).max()))
    if worst > tol:
        raise ParityError(f"{path}: onnxruntime differs from PyTorch by {worst:.3g} (> {tol:g})")
    return worst


def build_card(
    *,
    name: str,
    labels: list[str],
    shape,
    color: str,
    scale: float,
    mean,
    std,
    calibration: dict,
    method: str,
    teachers: list[str],
    dataset: str,
    metrics: dict,
    command: str,
) -> dict:
    return {
        "schema": 1,
        "name": name,
        "task": "classification",
        "labels": list(labels),
        "inputs": [
            {
                "name": "image",
                "modality": "camera",
                "shape": list(shape),
                "layout": "NCHW",
                "color": color,
                "resize": "stretch",
                "resample": RESAMPLE,
                "scale": scale,
                "mean": list(mean),
                "std": list(std),
                "optional": False,
            }
        ],
        "missing_modality": {"policy": "zero-fill", "mask_input": None},
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


def export_student(student: nn.Module, card: dict, ref_images: np.ndarray, out: Path, opset: int = 17) -> dict:
    """Write OUT/student.onnx (+card) and OUT/reference/; returns {"onnx", "onnx_bytes", "max_abs_diff"}."""
    path = out / "student.onnx"
    export_onnx(student, tuple(card["inputs"][0]["shape"]), path, opset)
    write_card(path, card)
    pairs = reference_tensors(student, ref_images, out / "reference")
    diff = verify_onnxruntime(path, pairs)
    return {"onnx": str(path), "onnx_bytes": path.stat().st_size, "max_abs_diff": diff}
