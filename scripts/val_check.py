"""Per-source validation accuracy of one or more model directories, with 95% Wilson intervals.

    .venv/bin/python scripts/val_check.py MODEL_DIR [MODEL_DIR ...] [--data ROOT] [--out FILE.json]

Reads the *validation* split of the first model's ``split_manifest.csv`` (never a test set), classifies
it through the serving path (``Classifier``, LiteRT) of every model, and prints accuracy and per-class
recall per source. This is how recipes are compared for in-domain accuracy (issue: other laboratories'
images) without reading the test sets; the stain-shift suite (``python -m hematovision stain-suite``)
judges the same models on shifts they never drew.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hematovision.config import data_root  # noqa: E402
from hematovision.data import datasets as ds  # noqa: E402
from hematovision.data.labeled import LabeledInputs  # noqa: E402
from hematovision.evaluation.evaluate import evaluate_labeled  # noqa: E402
from hematovision.imaging.sources import ImageInput  # noqa: E402
from hematovision.modeling import persistence  # noqa: E402
from hematovision.serving.classifier import Classifier  # noqa: E402
from hematovision.stats.metrics import wilson_interval  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    root = data_root(args.data)
    images = [i for i in ds.read_manifest(args.models[0] / persistence.MANIFEST_FILE, root) if i.split == "val"]
    results = []
    for model_dir in args.models:
        clf = Classifier.load(model_dir, batch_size=64)
        row = {"model": str(model_dir), "version": clf.version, "sources": {}}
        for source in sorted({i.source for i in images}):
            subset = [i for i in images if i.source == source]
            labeled = LabeledInputs(
                [ImageInput(i.relpath, (lambda p=i.path: p.read_bytes())) for i in subset],
                [i.label for i in subset],
                [i.group for i in subset],
            )
            rep, frame = evaluate_labeled(clf, labeled, f"{source} val")
            right = int((frame["true_class"] == frame["predicted_class"]).sum())
            lo, hi = wilson_interval(right, len(frame))
            recall = {c: float((g["predicted_class"] == c).mean()) for c, g in frame.groupby("true_class")}
            row["sources"][source] = {"n": len(frame), "accuracy": right / len(frame), "ci95": [lo, hi],
                                      "recall": recall}
            print(f"{clf.version}  {source:7s} val n={len(frame):5d}  {100 * right / len(frame):6.2f}% "
                  f"({100 * lo:.1f}-{100 * hi:.1f})  " + "  ".join(f"{c[:4]} {100 * r:.1f}" for c, r in recall.items()),
                  flush=True)
        results.append(row)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
