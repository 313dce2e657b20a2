"""Ships two students of the synthetic inspection set as `models/inspection/` (issue 14).

    python training/scripts/install_inspection.py \\
        --missing runs/inspection/mm-vit-missing-student-kd-e40-s0 \\
        --camera runs/inspection/vit-rgb-student-edam+crd-e40-s0 \\
        --samples data/inspection/test

It replaces, in this checkout:
  models/inspection/missing/    the missing-modality student (rgb + optional height): student.onnx,
                                distill-summary.json, distill-config.toml
  models/inspection/camera/     the camera-only student, the same files
  models/inspection/samples/    the first N samples of the --samples set: rgb/<id>-<label>.png,
                                height/<id>-<label>.png (16-bit) and manifest.csv
  models/inspection/samples.tsv each student's label and calibrated confidence per sample and
                                set of inputs (both maps; the camera image alone)

The expected values come from the trainer's own data path (the resampling definition, the card's
normalisation) and onnxruntime, so the Rust tests that compare `edge-kd run` with samples.tsv
check the runtime against the trainer, not against itself.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))

from edgekd_train.calibrate import softmax  # noqa: E402
from edgekd_train.card import presence_inputs, read_card  # noqa: E402
from edgekd_train.data.manifest import read_manifest, write_manifest  # noqa: E402
from edgekd_train.data.multimodal import COLORS, ModalitySpec, load_manifest_data  # noqa: E402

MODELS = ("missing", "camera")


class InstallError(Exception):
    pass


def check_run(run: Path, role: str) -> dict:
    for f in ("summary.json", "student.onnx", "config.resolved.toml"):
        if not (run / f).is_file():
            raise InstallError(f"{run}: no {f} (expected the folder of a finished `edge-kd distill` run)")
    card = read_card(run / "student.onnx", validate=True)
    names = [i["name"] for i in card["inputs"]]
    want = ["rgb", "height"] if role == "missing" else ["rgb"]
    if names != want or (role == "missing" and not presence_inputs(card)):
        raise InstallError(
            f"{run}: the {role} student takes {names}"
            + ("" if presence_inputs(card) else " with no presence input")
            + f" (expected {want}"
            + (" with height_present)" if role == "missing" else ")")
        )
    return card


def copy_samples(source: Path, dest: Path, n: int) -> Path:
    """The first n samples of the set, named <id>-<label>.png, and their manifest."""
    manifest = read_manifest(source / "manifest.csv")
    if len(manifest.records) < n:
        raise InstallError(f"{source}: {len(manifest.records)} samples, fewer than {n}")
    if dest.exists():
        shutil.rmtree(dest)
    rows = []
    for record in manifest.records[:n]:
        cells = []
        for name in ("rgb", "height"):
            rel = Path(name) / f"{record.id}-{record.label}.png"
            (dest / name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record.paths[name], dest / rel)
            cells.append(str(rel))
        rows.append((record.id, record.label, cells))
    write_manifest(dest / "manifest.csv", ("rgb", "height"), rows)
    return dest / "manifest.csv"


def expected_rows(model: Path, card: dict, manifest: Path, role: str) -> list[str]:
    """One row per sample and set of inputs the student runs with: label and confidence as the
    trainer's pipeline and onnxruntime give them, with the calibration of that set."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    labels = card["labels"]
    specs = [
        ModalitySpec(i["name"], 3 if i["color"] == "rgb" else 1, tuple(i["shape"][2:]), i["optional"])
        for i in card["inputs"]
    ]
    assert all(COLORS[s.channels] == i["color"] for s, i in zip(specs, card["inputs"], strict=True))
    data = load_manifest_data(manifest, specs, labels)
    cal = card["calibration"]
    sets = [(("rgb", "height"), cal["temperature"])] if role == "missing" else [(("rgb",), cal["temperature"])]
    if role == "missing":
        (sub,) = [s for s in cal.get("subsets", []) if s["present"] == ["rgb"]]
        sets.append((("rgb",), sub["temperature"]))
    rows = []
    records = read_manifest(manifest).records
    for present, temperature in sets:
        for k, record in enumerate(records):
            feeds = {}
            for spec, inp in zip(specs, card["inputs"], strict=True):
                x = data.images[spec.name][k].numpy().astype(np.float32)[None]
                c = spec.channels
                mean = np.asarray(inp["mean"], np.float32).reshape(1, c, 1, 1)
                std = np.asarray(inp["std"], np.float32).reshape(1, c, 1, 1)
                x = (x * np.float32(inp["scale"]) - mean) / std
                feeds[spec.name] = x if spec.name in present else np.zeros_like(x)
            for name in presence_inputs(card):
                feeds[name] = np.array([1.0 if name.removesuffix("_present") in present else 0.0], np.float32)
            logits = sess.run(["logits"], feeds)[0].astype(np.float64)
            p = softmax(logits, temperature)[0]
            file = Path(record.paths["rgb"]).name
            rows.append(
                f"{file}\t{record.label}\t{role}\t{'+'.join(present)}\t{labels[int(p.argmax())]}\t{p.max():.4f}"
            )
    return rows


def install(runs: dict[str, Path], samples: Path, n: int, repo: Path) -> list[str]:
    cards = {role: check_run(run, role) for role, run in runs.items()}
    base = repo / "models" / "inspection"
    manifest = copy_samples(samples, base / "samples", n)
    rows = ["file\ttrue_label\tmodel\tinputs\tpredicted_label\tconfidence"]
    for role, run in runs.items():
        dest = base / role
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "student.onnx", dest / "student.onnx")
        shutil.copyfile(run / "summary.json", dest / "distill-summary.json")
        shutil.copyfile(run / "config.resolved.toml", dest / "distill-config.toml")
        rows += expected_rows(dest / "student.onnx", cards[role], manifest, role)
    (base / "samples.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--missing", type=Path, required=True, help="run of the missing-modality student")
    p.add_argument("--camera", type=Path, required=True, help="run of the camera-only student")
    p.add_argument(
        "--samples", type=Path, required=True, help="an inspection set (with manifest.csv) to take samples from"
    )
    p.add_argument("--n", type=int, default=12, help="samples to ship")
    p.add_argument("--repo", type=Path, default=REPO, help="checkout to install into (default: this one)")
    args = p.parse_args(argv)
    try:
        rows = install({"missing": args.missing, "camera": args.camera}, args.samples, args.n, args.repo)
    except (InstallError, OSError, ValueError) as e:
        print(f"install_inspection: {e}", file=sys.stderr)
        return 1
    for role in MODELS:
        for present in ("rgb+height", "rgb"):
            mine = [r.split("\t") for r in rows[1:] if r.split("\t")[2] == role and r.split("\t")[3] == present]
            if mine:
                right = sum(c[1] == c[4] for c in mine)
                print(f"{role} student with {present}: {right} of {len(mine)} samples right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
