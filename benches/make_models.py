#!/usr/bin/env python3
"""Write the two comparison models for the edge-kd benchmarks (benches/models/).

    .venv/bin/python benches/make_models.py [--out benches/models] [--force]

* mobilenet_v3_small-224.onnx  torchvision mobilenet_v3_small (depthwise + SE + hard-swish)
* mobilenet_v2-224.onnx        torchvision mobilenet_v2 (plain depthwise, ReLU6), for contrast

Both are RANDOM-INIT (seeded) weights: nothing is downloaded. Their outputs mean nothing;
they exist only to measure latency on realistic ImageNet-sized graphs. Each file carries an
edge-kd card (docs/card.schema.json) written with training/edgekd_train/card.py, so
`edge-kd bench --model ...` preprocesses a frame the way a real ImageNet model would
(RGB, center-crop to 224, /255, ImageNet mean/std).

Export: input "image" [1,3,224,224] f32, output "logits" [1,1000], opset 17,
torch.onnx.export(dynamo=False), static shapes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "training"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision.models import mobilenet_v2, mobilenet_v3_small  # noqa: E402

from edgekd_train.card import read_card, write_card  # noqa: E402

SEED = 0
SIZE = 224
MODELS = {
    "mobilenet_v3_small-224": mobilenet_v3_small,
    "mobilenet_v2-224": mobilenet_v2,
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def card_for(name: str, cmd: str) -> dict:
    return {
        "schema": 1,
        "name": name,
        "task": "classification",
        "labels": [f"class_{i}" for i in range(1000)],
        "inputs": [
            {
                "name": "image",
                "modality": "camera",
                "shape": [1, 3, SIZE, SIZE],
                "layout": "NCHW",
                "color": "rgb",
                "resize": "center-crop",
                "scale": 1.0 / 255.0,
                "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD,
                "optional": False,
            }
        ],
        "output": "logits",
        "calibration": None,
        "provenance": {
            "method": "none",
            "dataset": "none (random weights: latency only)",
            "command": cmd,
        },
    }


def recalibrate_bn(model: torch.nn.Module, batches: int = 2, batch: int = 8) -> None:
    """Set BatchNorm running statistics from random input, then eval().

    Fresh torchvision init leaves BN at mean 0 / var 1, and the activations then shrink layer by
    layer (logits ~1e-9). Tiny activations can turn into float denormals, which are far slower on
    x86 and would make a latency benchmark unrepresentative. Re-estimating the BN statistics on
    random images keeps activations near unit scale, as in a trained network. Weights stay random.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    g = torch.Generator().manual_seed(SEED + 1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, SIZE, SIZE, generator=g))
    model.eval()


def export(name: str, ctor, out_dir: Path, cmd: str) -> Path:
    torch.manual_seed(SEED)
    model = ctor(weights=None)
    recalibrate_bn(model)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        ref = model(x).numpy()
    path = out_dir / f"{name}.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        do_constant_folding=True,
    )
    write_card(path, card_for(name, cmd))

    # Sanity: the exported graph runs in onnxruntime and matches torch; card reads back.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"image": x.numpy()})[0]
    err = float(np.max(np.abs(got - ref)))
    assert got.shape == (1, 1000), got.shape
    assert err < 1e-3 * max(1.0, float(np.max(np.abs(ref)))), f"{name}: ort vs torch max |diff| {err}"
    assert read_card(path, validate=True)["name"] == name

    params = sum(p.numel() for p in model.parameters())
    mib = path.stat().st_size / 2**20
    print(
        f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {mib:.2f} MiB, "
        f"{params / 1e6:.2f} M params, logits |max| {np.max(np.abs(ref)):.3g}, "
        f"ort-vs-torch max|diff| {err:.2e}"
    )
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "models")
    ap.add_argument("--force", action="store_true", help="rewrite models that already exist")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, seed {SEED}, random-init weights")
    cmd = "python benches/make_models.py"
    for name, ctor in MODELS.items():
        path = args.out / f"{name}.onnx"
        if path.exists() and not args.force:
            print(f"{path}: exists, {path.stat().st_size / 2**20:.2f} MiB (use --force to rewrite)")
            continue
        export(name, ctor, args.out, cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
