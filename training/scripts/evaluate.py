"""Checks exported students out of sample: the shipped ONNX file under onnxruntime on the test
split, with the thresholds of its card and with thresholds re-chosen on the run's calibration
split at other bound confidences.

    python training/scripts/evaluate.py runs/study/cnn-70k-kd-e20-s0 [RUN ...] [--confidence 0 0.9]

For each run (a folder of `edge-kd distill`: config.resolved.toml, student.onnx) it prints one
markdown row per bound confidence: test accuracy, test ECE after the card's temperature, and
coverage and error among accepted on the test split, overall and for the class whose error is
worst. The thresholds aim at the run's `[calibration].max_error_among_accepted` on the
calibration split; these rows say how that held on images they never saw.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekd_train.calibrate import apply_thresholds, calibrate, ece, softmax  # noqa: E402
from edgekd_train.card import read_card  # noqa: E402
from edgekd_train.config import ConfigError, load_config  # noqa: E402
from edgekd_train.data.splits import DataError, load_splits  # noqa: E402


def logits_of(session, images: np.ndarray, mean, std, scale: float) -> np.ndarray:
    """Logits of uint8 NCHW images, preprocessed as the card says, one at a time (the shipped
    file has a static batch of 1)."""
    c = images.shape[1]
    m = np.asarray(mean, np.float32).reshape(1, c, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, c, 1, 1)
    x = (images.astype(np.float32) * np.float32(scale) - m) / s
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def rows_for(run: Path, confidences: list[float], data_path: str | None, per_class: bool = False) -> list[str]:
    import onnxruntime as ort

    overrides = [f'data.path="{data_path}"'] if data_path else []
    cfg = load_config(run / "config.resolved.toml", overrides, warn=lambda _m: None)
    splits = load_splits(cfg.data, cfg.inputs)
    card = read_card(run / "student.onnx")
    if len(card["inputs"]) != 1:
        raise SystemExit(f"{run}: evaluate.py handles one-input students; this one has {len(card['inputs'])}")
    inp = card["inputs"][0]
    image = inp["name"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(run / "student.onnx"), opts, providers=["CPUExecutionProvider"])
    args = (inp["mean"], inp["std"], inp["scale"])
    cal_logits = logits_of(sess, splits.calibration.images[image].numpy(), *args).astype(np.float64)
    test_logits = logits_of(sess, splits.test.images[image].numpy(), *args).astype(np.float64)
    cal_y, test_y = splits.calibration.labels.numpy(), splits.test.labels.numpy()
    names = card["labels"]
    target = cfg.calibration.max_error_among_accepted

    out = []
    for conf in confidences:
        c = calibrate(cal_logits, cal_y, names, target, cfg.calibration.min_samples_per_class, conf)
        p = softmax(test_logits, c.temperature)
        pred = p.argmax(1)
        accepted = apply_thresholds(p, names, c.per_class, c.default)
        wrong = pred != test_y
        err = wrong[accepted].mean() if accepted.any() else float("nan")
        worst, worst_err = "–", -1.0
        for k, name in enumerate(names):
            m = accepted & (pred == k)
            if m.sum() and wrong[m].mean() > worst_err:
                worst, worst_err = name, float(wrong[m].mean())
        out.append(
            f"| {run.name} | {conf:g} | {(~wrong).mean() * 100:.2f} | {ece(p, test_y):.4f} | "
            f"{(c.coverage or 0) * 100:.1f} | {accepted.mean() * 100:.1f} | {err * 100:.2f} | "
            f"{worst} {worst_err * 100:.2f} |"
        )
        if per_class:
            out += [
                "",
                f"{run.name}, bound confidence {conf:g}, per predicted class:",
                "",
                "| class | threshold | predicted, test | accepted, test | error among accepted, test |",
                "|---|---|---|---|---|",
            ]
            for k, name in enumerate(names):
                pk = pred == k
                m = accepted & pk
                thr = c.per_class[name]
                out.append(
                    f"| {name} | {'null (review)' if thr is None else f'{thr:.3f}'} | {pk.sum()} | "
                    f"{m.sum() / max(pk.sum(), 1) * 100:.1f} % | "
                    f"{f'{wrong[m].mean() * 100:.2f} %' if m.any() else '–'} |"
                )
            out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders of `edge-kd distill`")
    p.add_argument(
        "--confidence",
        nargs="+",
        type=float,
        default=[0.0, 0.9],
        help="bound confidences to choose thresholds at (0: the observed error; default 0 0.9)",
    )
    p.add_argument("--data", help="data path, if not the one in the run's config")
    p.add_argument("--per-class", action="store_true", help="also a table per predicted class for each run")
    args = p.parse_args(argv)
    print(
        "| run | bound confidence | test accuracy % | test ECE | coverage cal % | coverage test % | "
        "error among accepted, test % | worst class, test % |"
    )
    print("|---|---|---|---|---|---|---|---|")
    failed = 0
    for run in args.runs:
        try:
            for row in rows_for(run, args.confidence, args.data, args.per_class):
                print(row, flush=True)
        except (OSError, ConfigError, DataError, ValueError) as e:
            print(f"evaluate: {run}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
