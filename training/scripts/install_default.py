"""Makes a finished `edge-kd distill` run on Fashion-MNIST the shipped default student.

    python training/scripts/install_default.py runs/study/cnn-70k-dtokd-e20-s0

It replaces, in this checkout:
  models/default/student.onnx        the run's student.onnx (card inside; embedded by the next build)
  models/default/reference/          the run's first four reference input/output pairs
  models/default/distill-summary.json, models/default/distill-config.toml   provenance
  models/samples.tsv                 the new student's label and calibrated confidence per sample
  docs/img/default-reliability.png, docs/img/default-risk-coverage.png

The shipped samples (models/samples/NNNN-*.png) are Fashion-MNIST test images NNNN, and the Rust
tests check that reference input k is sample k preprocessed; so the run must be on Fashion-MNIST
with its test split unshuffled, which is checked before anything is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))

from edgekd_train.calibrate import softmax  # noqa: E402
from edgekd_train.card import read_card  # noqa: E402

N_REFERENCE = 4  # the Rust tests read input_0..3 / output_0..3


class InstallError(Exception):
    pass


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


def preprocess(png: Path, inp: dict) -> np.ndarray:
    from PIL import Image

    with Image.open(png) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    if pixels.shape != tuple(inp["shape"][2:]):
        raise InstallError(f"{png}: {pixels.shape[1]}x{pixels.shape[0]} pixels, the card wants {inp['shape'][2:]}")
    x = (pixels * np.float32(inp["scale"]) - np.float32(inp["mean"][0])) / np.float32(inp["std"][0])
    return x[None, None]


def check_run(run: Path, samples: list[Path]) -> dict:
    for f in ("summary.json", "student.onnx", "config.resolved.toml"):
        if not (run / f).is_file():
            raise InstallError(f"{run}: no {f} (expected the folder of a finished `edge-kd distill` run)")
    card = read_card(run / "student.onnx", validate=True)
    if card is None:
        raise InstallError(f"{run / 'student.onnx'}: has no edge-kd card")
    inp = card["inputs"][0]
    if card.get("provenance", {}).get("dataset") != "fashion-mnist" or inp["color"] != "gray":
        raise InstallError(f"{run}: not a Fashion-MNIST student; the shipped samples are Fashion-MNIST images")
    for k in range(N_REFERENCE):
        ref = run / "reference" / f"input_{k}.npy"
        if not ref.is_file():
            raise InstallError(f"{ref}: missing (the run needs at least {N_REFERENCE} reference samples)")
        diff = float(np.abs(np.load(ref) - preprocess(samples[k], inp)).max())
        if diff > 1e-5:
            raise InstallError(
                f"{ref}: is not {samples[k].name} preprocessed by the card (max abs diff {diff:.2e}); "
                "the run's test split must be Fashion-MNIST's, unshuffled"
            )
    return card


def sample_rows(run: Path, card: dict, samples: list[Path]) -> list[str]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(run / "student.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    labels = card["labels"]
    by_slug = {slug(lbl): lbl for lbl in labels}
    rows = ["file\ttrue_label\tpredicted_label\tconfidence"]
    for png in samples:
        true = by_slug.get(png.stem.split("-", 1)[1])
        if true is None:
            raise InstallError(f"{png}: the name does not end in one of the card's labels")
        logits = sess.run(None, {name: preprocess(png, card["inputs"][0])})[0].astype(np.float64)
        p = softmax(logits, card["calibration"]["temperature"])[0]
        rows.append(f"{png.name}\t{true}\t{labels[int(p.argmax())]}\t{p.max():.4f}")
    return rows


def install(run: Path, repo: Path) -> list[str]:
    samples = sorted((repo / "models" / "samples").glob("*.png"))
    if len(samples) < N_REFERENCE:
        raise InstallError(f"{repo / 'models' / 'samples'}: fewer than {N_REFERENCE} sample images")
    card = check_run(run, samples)
    rows = sample_rows(run, card, samples)

    default = repo / "models" / "default"
    ref = default / "reference"
    if ref.exists():
        shutil.rmtree(ref)
    ref.mkdir(parents=True)
    for k in range(N_REFERENCE):
        for kind in ("input", "output"):
            shutil.copyfile(run / "reference" / f"{kind}_{k}.npy", ref / f"{kind}_{k}.npy")
    shutil.copyfile(run / "student.onnx", default / "student.onnx")
    shutil.copyfile(run / "summary.json", default / "distill-summary.json")
    shutil.copyfile(run / "config.resolved.toml", default / "distill-config.toml")
    (repo / "models" / "samples.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    img = repo / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    for src, dst in (
        ("reliability.png", "default-reliability.png"),
        ("risk_coverage.png", "default-risk-coverage.png"),
    ):
        if (run / src).is_file():
            shutil.copyfile(run / src, img / dst)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="folder of a finished `edge-kd distill` run")
    p.add_argument("--repo", type=Path, default=REPO, help="checkout to install into (default: this one)")
    args = p.parse_args(argv)
    try:
        rows = install(args.run, args.repo)
    except (InstallError, OSError, ValueError) as e:
        print(f"install_default: {e}", file=sys.stderr)
        return 1
    summary = json.loads((args.run / "summary.json").read_text(encoding="utf-8"))
    wrong = [r.split("\t")[0] for r in rows[1:] if r.split("\t")[1] != r.split("\t")[2]]
    print(
        f"installed {args.run / 'student.onnx'} as models/default/student.onnx: {summary['student']['model']}, "
        f"{summary['method']}, test accuracy {summary['student']['test_accuracy'] * 100:.2f} %"
    )
    print(
        f"samples: {len(rows) - 1 - len(wrong)} of {len(rows) - 1} right"
        + (f" (wrong: {', '.join(wrong)})" if wrong else "")
    )
    print(
        "next: cargo build (the default is embedded), then refresh README's sample output with "
        "`cargo run --release -- run models/samples/` and docs/RESULTS.md with training/scripts/evaluate.py"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
