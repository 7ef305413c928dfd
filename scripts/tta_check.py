"""Test-time augmentation, judged on validation: does averaging a model over rotations of the cell help?

    .venv/bin/python scripts/tta_check.py [--model models] [--data DIR] [--split val]

A cell has no up or down, so the network could be asked four times (0, 90, 180, 270 degrees, and
mirrored: eight) and its logits averaged. This prints, per source, the accuracy and the NLL after
a temperature refitted for each way of combining, on the *validation* split (never a test set).
The model's own temperature is undone first (logits are recovered from the probabilities up to a
per-image constant, which the softmax ignores). Not shipped: it costs 4-8 forward passes an image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hematovision.config import data_root  # noqa: E402
from hematovision.data import datasets as ds  # noqa: E402
from hematovision.imaging.decode import read_rgb  # noqa: E402
from hematovision.imaging.framing import model_input  # noqa: E402
from hematovision.serving.classifier import Classifier  # noqa: E402
from hematovision.stats import calibration  # noqa: E402


def dihedral(batch: np.ndarray, k: int) -> np.ndarray:
    """View ``k`` (0-7) of a batch of square images: ``k % 4`` quarter turns, mirrored when ``k >= 4``."""
    out = np.rot90(batch, k % 4, axes=(1, 2))
    return np.ascontiguousarray(out[:, :, ::-1] if k >= 4 else out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models", help="model directory (default: models)")
    p.add_argument("--data", help="data root (default: $HEMATOVISION_DATA or ../shared/data)")
    p.add_argument("--split", default="val", choices=["val", "train"], help="which split to measure on (default: val)")
    args = p.parse_args()

    clf = Classifier.load(args.model)
    images = ds.select(ds.discover(data_root(args.data)), split=args.split)
    index = {c: k for k, c in enumerate(clf.classes_)}
    y = np.array([index[i.label] for i in images])
    source = np.array([i.source for i in images])
    x = np.stack([model_input(read_rgb(i.path), clf.input_size, clf.framing) for i in images]).astype(np.float32)
    logits = []
    for k in range(8):
        view = dihedral(x, k)
        probs = np.concatenate([clf._forward(view[b:b + 64]) for b in range(0, len(view), 64)])
        logits.append(clf.card.temperature * np.log(np.clip(probs, 1e-30, None)))
        print(f"view {k} done", file=sys.stderr)
    views = np.stack(logits)
    print(f"{clf.version} on {args.split} ({len(images)} images)\n")
    print(
        "| combination | forward passes | " + " | ".join(f"{s} accuracy | {s} NLL" for s in sorted(set(source))) + " |"
    )
    print("|---|---:|" + "---:|---:|" * len(set(source)))
    for name, n, lg in [
        ("plain", 1, views[0]),
        ("4 rotations", 4, views[:4].mean(0)),
        ("4 rotations x 2 mirrors", 8, views.mean(0)),
    ]:
        t = calibration.fit_temperature(lg, y)
        cells = []
        for s in sorted(set(source)):
            m = source == s
            cells += [f"{(lg[m].argmax(1) == y[m]).mean():.2%}", f"{calibration.nll(lg[m] / t, y[m]):.3f}"]
        print(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
