"""Exports the teacher of a finished `edge-kd distill` run to ONNX, so `edge-kd bench` can time
teacher and student on the same engine and box (issue 14's "runs faster than the teacher").

    python training/scripts/export_teacher.py runs/inspection/vit-rgb-student-kd-e40-s0

Writes RUN/teacher/teacher.onnx, with a card (the data's inputs and normalisation, no
calibration: the teacher is measured, not deployed) and RUN/teacher/reference/, checked against
PyTorch in onnxruntime as the student's export is. A missing optional input reaches the teacher
as zeros (policy "zero-fill"), as in training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))

from edgekd_train.config import ConfigError, load_config  # noqa: E402
from edgekd_train.data.feed import Feed  # noqa: E402
from edgekd_train.data.splits import DataError, load_splits  # noqa: E402
from edgekd_train.export import build_card, export_student  # noqa: E402
from edgekd_train.models import external  # noqa: E402
from edgekd_train.pipeline import build_model, card_inputs, model_specs, reference_samples  # noqa: E402


def export(run: Path, n_reference: int) -> dict:
    for f in ("config.resolved.toml", "teacher.pt", "summary.json"):
        if not (run / f).is_file():
            raise FileNotFoundError(f"{run}: no {f} (expected a finished `edge-kd distill` run with a teacher)")
    cfg = load_config(run / "config.resolved.toml", warn=lambda _m: None)
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    splits = load_splits(cfg.data, cfg.inputs)
    teacher = build_model(cfg, splits, "teacher").eval()
    external.load_state(teacher, str(run / "teacher.pt"))
    specs = model_specs(cfg, splits, "teacher")
    inputs = card_inputs(specs, splits.normalizer)
    card = build_card(
        name=f"{cfg.data.dataset}-{cfg.teacher.model}-teacher",
        labels=splits.labels,
        inputs=inputs,
        calibration=None,
        method="teacher",
        teachers=[],
        dataset=cfg.data.dataset,
        metrics={"test_accuracy": summary["teacher"]["test_accuracy"], "params": summary["teacher"]["params"]},
        command=" ".join(sys.argv),
    )
    feed = Feed(splits.normalizer, tuple(s.name for s in splits.specs if s.optional))
    samples = reference_samples(specs, splits.test, feed, n_reference, learned_token=False)
    (run / "teacher").mkdir(exist_ok=True)
    return export_student(teacher, card, samples, run / "teacher", filename="teacher.onnx")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="folder of a finished `edge-kd distill` run")
    p.add_argument("--reference-samples", type=int, default=4)
    args = p.parse_args(argv)
    try:
        res = export(args.run, args.reference_samples)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
        print(f"export_teacher: {e}", file=sys.stderr)
        return 1
    print(f"{res['onnx']}: {res['onnx_bytes']} bytes, onnxruntime vs PyTorch max abs diff {res['max_abs_diff']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
