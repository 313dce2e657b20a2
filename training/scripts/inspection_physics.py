"""The inspection set's physics test over more seeds than CI runs: held-out accuracy of a
logistic regression on each modality alone, per defect against `ok` (docs/RESULTS.md).

    PYTHONPATH=training .venv/bin/python training/scripts/inspection_physics.py --seeds 0-7
"""

import argparse
import sys
from pathlib import Path

import numpy as np

# The test's own features and classifier, so this measures exactly what the test asserts.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_inspection import _held_out_accuracy, _statistics  # noqa: E402

from edgekd_train.data.inspection import generate  # noqa: E402

DEFECTS = ("dent", "stain", "scratch", "crack")
MODALITIES = ("rgb", "height")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0-7", help="first-last (inclusive)")
    p.add_argument("--n", type=int, default=400, help="samples per seed (classes balanced)")
    args = p.parse_args()
    first, last = (int(x) for x in args.seeds.split("-"))
    print("| seed | " + " | ".join(f"{d} (rgb / height)" for d in DEFECTS) + " |")
    print("|---|" + "---|" * len(DEFECTS))
    for seed in range(first, last + 1):
        samples = [generate(seed, i) for i in range(args.n)]
        labels = np.array([s.label for s in samples])
        stats = {m: np.array([_statistics(getattr(s, m)) for s in samples]) for m in MODALITIES}
        cells = []
        for defect in DEFECTS:
            pick = (labels == "ok") | (labels == defect)
            y = (labels[pick] == defect).astype(float)
            cells.append(" / ".join(f"{_held_out_accuracy(stats[m][pick], y):.3f}" for m in MODALITIES))
        print(f"| {seed} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
