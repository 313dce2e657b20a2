#!/usr/bin/env python3
"""Train, calibrate and export the shipped default student (models/default/fashion-tiny.onnx).

Honest CPU recipe, seeded:

* data: Fashion-MNIST IDX files; training images 0..54999 train, 55000..59999 are the
  calibration split (never the test set); the 10k test images are only evaluated.
* preprocessing, identical to the card: ``x = (pixel * (1/255) - 0.2860) / 0.3530``.
* model: plain CNN, conv3x3+BN+ReLU blocks (1->16, 16->32 /2, 32->32, 32->48 /2),
  global average pool, linear 48->10. BN is folded into the convs by the eval-mode
  ONNX export, so the graph holds only Conv, Relu, GlobalAveragePool, Flatten, Gemm.
* training: AdamW + one-cycle LR, cross-entropy, random horizontal flips.
* calibration: edgekd_train.calibrate (temperature scaling, 1 % error target).
* export: ONNX opset 17, static batch 1, card written by edgekd_train.card.

Run from the repository root::

    .venv/bin/python training/scripts/train_default_student.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from edgekd_train import __version__  # noqa: E402
from edgekd_train.calibrate import apply_thresholds, calibrate, ece, softmax  # noqa: E402
from edgekd_train.card import read_card, write_card  # noqa: E402
from edgekd_train.data.fashion_mnist import CLASSES, DEFAULT_ROOT, load_split  # noqa: E402

SCALE = 1.0 / 255.0  # 0.00392156862745098
MEAN = 0.2860
STD = 0.3530
N_CAL = 5000


def preprocess(images_u8: np.ndarray) -> np.ndarray:
    """uint8 (N,28,28) -> float32 (N,1,28,28), exactly (pixel*scale - mean)/std."""
    x = images_u8.astype(np.float32)[:, None, :, :]
    return ((x * np.float32(SCALE) - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)


def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class TinyCNN(nn.Module):
    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *block(1, 16, 1), *block(16, 32, 2), *block(32, 32, 1), *block(32, 48, 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float32)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def export(model: nn.Module, path: Path, dynamic: bool) -> None:
    model.eval()
    kwargs = {}
    if dynamic:
        kwargs["dynamic_axes"] = {"image": {0: "n"}, "logits": {0: "n"}}
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        do_constant_folding=True,
        **kwargs,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_ROOT, help="folder with the four Fashion-MNIST IDX .gz files")
    ap.add_argument("--out", default=str(REPO / "models"), help="models/ folder (default/ and samples/ go here)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy 2-core box)")
    args = ap.parse_args()

    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)

    out = Path(args.out)
    (out / "default" / "reference").mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(parents=True, exist_ok=True)

    train_u8, train_y = load_split("train", args.data)
    test_u8, test_y = load_split("test", args.data)
    n_train = len(train_u8) - N_CAL
    x_tr, y_tr = preprocess(train_u8[:n_train]), train_y[:n_train].astype(np.int64)
    x_cal, y_cal = preprocess(train_u8[n_train:]), train_y[n_train:].astype(np.int64)
    x_te, y_te = preprocess(test_u8), test_y.astype(np.int64)
    print(f"train {len(x_tr)}  calibration {len(x_cal)}  test {len(x_te)}", flush=True)

    model = TinyCNN(len(CLASSES))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params}", flush=True)
    steps_per_epoch = (len(x_tr) + args.batch - 1) // args.batch
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.2
    )
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch : (s + 1) * args.batch]
            xb, yb = xt[idx], yt[idx]
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        cal_acc = float((predict(model, x_cal).argmax(1) == y_cal).mean())
        print(
            f"epoch {epoch + 1}/{args.epochs}  loss {total / len(xt):.4f}  cal acc {cal_acc:.4f}  "
            f"{time.time() - t0:.0f}s",
            flush=True,
        )
    train_s = time.time() - t0
    model.eval()

    # Evaluate and calibrate (calibration split only; the test set is only reported).
    logits_te = predict(model, x_te)
    test_acc = float((logits_te.argmax(1) == y_te).mean())
    logits_cal = predict(model, x_cal)
    cal = calibrate(logits_cal, y_cal, CLASSES)
    p_te = softmax(logits_te, cal.temperature)
    acc_te = apply_thresholds(p_te, CLASSES, cal.per_class, cal.default)
    test_cov = float(acc_te.mean())
    test_err = float((p_te.argmax(1) != y_te)[acc_te].mean()) if acc_te.any() else float("nan")
    print(f"test accuracy {test_acc:.4f}  T {cal.temperature:.4f}  ECE {cal.ece_before:.4f} -> {cal.ece_after:.4f}")
    print(f"calibration coverage {cal.coverage:.4f} error {cal.error_among_accepted}")
    print(f"test coverage {test_cov:.4f} error among accepted {test_err:.4f}")

    # Export (static batch 1) and write the card.
    onnx_path = out / "default" / "fashion-tiny.onnx"
    export(model, onnx_path, dynamic=False)
    card = {
        "schema": 1,
        "name": "fashion-tiny",
        "task": "classification",
        "labels": list(CLASSES),
        "inputs": [
            {
                "name": "image",
                "modality": "camera",
                "shape": [1, 1, 28, 28],
                "layout": "NCHW",
                "color": "gray",
                "resize": "stretch",
                "scale": SCALE,
                "mean": [MEAN],
                "std": [STD],
                "optional": False,
            }
        ],
        "missing_modality": {"policy": "zero-fill", "mask_input": None},
        "output": "logits",
        "calibration": cal.to_card(),
        "provenance": {
            "method": "scratch",
            "teachers": [],
            "dataset": "fashion-mnist",
            "metrics": {
                "test_accuracy": test_acc,
                "calibration_nll_before": cal.nll_before,
                "calibration_nll_after": cal.nll_after,
                "params": n_params,
                "test_ece_after": ece(p_te, y_te),
                "test_coverage_at_target": test_cov,
                "test_error_among_accepted": test_err,
            },
            "edge_kd_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            "command": command,
        },
    }
    write_card(onnx_path, card)
    assert read_card(onnx_path, validate=True) == json.loads(json.dumps(card))

    # Verify with onnxruntime: a temporary dynamic-batch copy on all 10k, the shipped
    # file one image at a time on the first 1000.
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(onnx_path))
    ops = sorted({n.op_type for n in m.graph.node})
    print(f"onnx ops {ops}  size {onnx_path.stat().st_size} bytes")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        dyn = Path(tmp) / "dyn.onnx"
        export(model, dyn, dynamic=True)
        sess = ort.InferenceSession(str(dyn), so, providers=["CPUExecutionProvider"])
        ort_logits = np.concatenate(
            [sess.run(["logits"], {"image": x_te[i : i + 1000]})[0] for i in range(0, len(x_te), 1000)]
        )
    ort_acc = float((ort_logits.argmax(1) == y_te).mean())
    print(f"onnxruntime (dynamic copy) test accuracy {ort_acc:.4f}  max |dlogit| {np.abs(ort_logits - logits_te).max():.2e}")
    assert abs(ort_acc - test_acc) <= 0.001, (ort_acc, test_acc)
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    one = np.concatenate([sess.run(["logits"], {"image": x_te[i : i + 1]})[0] for i in range(1000)])
    d1 = np.abs(one - logits_te[:1000]).max()
    a1, a2 = (one.argmax(1) == y_te[:1000]).mean(), (logits_te[:1000].argmax(1) == y_te[:1000]).mean()
    print(f"onnxruntime (shipped, batch 1) first 1000: acc {a1:.4f} vs torch {a2:.4f}, max |dlogit| {d1:.2e}")
    assert abs(a1 - a2) <= 0.001

    # Reference tensors for the Rust tests.
    ref = out / "default" / "reference"
    for k in range(4):
        np.save(ref / f"input_{k}.npy", x_te[k : k + 1].astype(np.float32))
        np.save(ref / f"output_{k}.npy", logits_te[k : k + 1].astype(np.float32))

    # Sample images: first test occurrence of each class, plus the next 2 unused indices.
    from PIL import Image

    chosen = sorted(int(np.nonzero(test_y == c)[0][0]) for c in range(len(CLASSES)))
    extra = [i for i in range(len(test_y)) if i not in chosen][:2]
    chosen = sorted(chosen + extra)
    samples = out / "samples"
    for old in samples.glob("*.png"):
        old.unlink()
    rows = ["file\ttrue_label\tpredicted_label\tconfidence"]
    for i in chosen:
        name = f"{i:04d}-{slug(CLASSES[test_y[i]])}.png"
        Image.fromarray(test_u8[i], mode="L").save(samples / name)
        back = np.asarray(Image.open(samples / name))
        assert back.dtype == np.uint8 and (back == test_u8[i]).all()
        lg = predict(model, preprocess(back[None]))
        p = softmax(lg, cal.temperature)[0]
        rows.append(f"{name}\t{CLASSES[test_y[i]]}\t{CLASSES[int(p.argmax())]}\t{p.max():.4f}")
    (samples.parent / "samples.tsv").write_text("\n".join(rows) + "\n")

    summary = {
        "train_seconds": round(train_s, 1),
        "command": command,
        "params": n_params,
        "test_accuracy": test_acc,
        "ort_test_accuracy": ort_acc,
        "calibration": cal.to_card(),
        "calibration_error_among_accepted": cal.error_among_accepted,
        "nll": [cal.nll_before, cal.nll_after],
        "test_ece_before": ece(softmax(logits_te), y_te),
        "test_ece_after": ece(p_te, y_te),
        "test_coverage": test_cov,
        "test_error_among_accepted": test_err,
        "onnx_ops": ops,
        "onnx_bytes": onnx_path.stat().st_size,
        "samples": chosen,
    }
    print(json.dumps(summary, indent=1))
    print(f"training wall time {train_s:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
