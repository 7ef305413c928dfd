"""Accuracy of models on PBC test images under simulated laboratory shifts (hematovision.evaluation.shifts).

    .venv/bin/python scripts/shift_check.py --model models [--model OTHER_DIR ...] [--write docs/shift-check.md]

Prints a Markdown table: one row per shift, one column per model (accuracy and 95% interval).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hematovision.config import data_root  # noqa: E402
from hematovision.data import datasets as ds  # noqa: E402
from hematovision.evaluation.shifts import SHIFTS  # noqa: E402
from hematovision.imaging.decode import read_rgb  # noqa: E402
from hematovision.modeling import persistence  # noqa: E402
from hematovision.serving.classifier import Classifier  # noqa: E402
from hematovision.stats import metrics


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="model directory (repeat to compare)")
    p.add_argument("--data", help="data root (default: $HEMATOVISION_DATA or ../shared/data)")
    p.add_argument("--write", help="also write the table to this Markdown file")
    a = p.parse_args()
    root = data_root(a.data)
    first = Path(a.model[0])
    images = ds.test_set(ds.read_manifest(first / persistence.MANIFEST_FILE, root), "pbc_test")
    rgbs = [read_rgb(i.path) for i in images]
    models = [Classifier.load(m) for m in a.model]
    labels = [np.array([m.classes_.index(i.label) for i in images]) for m in models]
    head = (
        "| shift | what it simulates | "
        + " | ".join(f"`{m.version}` ({m.card.framing} framing)" for m in models)
        + " |"
    )
    lines = [head, "|---|---|" + "---|" * len(models)]
    for shift in SHIFTS:
        shifted = [shift.apply(x) for x in rgbs]
        cells = []
        for m, y in zip(models, labels):
            ok = int((m.predict_proba(shifted).argmax(1) == y).sum())
            lo, hi = metrics.wilson_interval(ok, len(y))
            cells.append(f"{ok / len(y):.1%} ({lo:.1%}–{hi:.1%})")
        lines.append(f"| {shift.name} | {shift.describe} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    if a.write:
        Path(a.write).write_text(
            f"PBC test ({len(images)} images), measured "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}:\n\n{table}\n"
        )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
