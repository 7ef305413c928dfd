"""Reproduce the smear-field figures: white-cell boxes and classes on the BCCD fields, per split and colouring.

    .venv/bin/python scripts/field_check.py [--data DIR] [--model DIR] [--record] [--splits dev,test]

Every field goes through ``classify_fields`` (the path of ``classify --fields``): detection, crop,
the single-image framing and the shipped model. Recall and precision of white-cell boxes at IoU >= 0.5
against BCCD's annotations; class accuracy of the found cell on fields with one annotated white cell and
one labelled class. The split (dev: tuning; test: reported, never tuned on) is recorded in
``hematovision/detection/bccd_split.csv``; this script checks it against the hash rule and writes it
when absent. ``--record`` writes the figures into the model's ``evaluation.json`` under ``smear_fields``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hematovision.config import data_root, model_dir  # noqa: E402
from hematovision.detection import bccd  # noqa: E402
from hematovision.detection.cells import classify_fields  # noqa: E402
from hematovision.detection.recolour import RECOLOURS, recolour  # noqa: E402
from hematovision.detection.wbc import DEFAULT_PARAMS  # noqa: E402
from hematovision.imaging.sources import ImageInput  # noqa: E402
from hematovision.modeling import persistence  # noqa: E402
from hematovision.serving.classifier import Classifier  # noqa: E402


def _inputs(fields, colouring: str):
    for f in fields:
        if not colouring:
            yield ImageInput(f.name, (lambda p=f.image: p.read_bytes()))
        else:

            def read(p=f.image, c=colouring):
                rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
                ok, buf = cv2.imencode(".png", cv2.cvtColor(recolour(rgb, c), cv2.COLOR_RGB2BGR))
                return buf.tobytes()

            yield ImageInput(f"{f.name}:{colouring}", read)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="data root (default: $HEMATOVISION_DATA or ../shared/data)")
    ap.add_argument("--model", help="model directory (default: the shipped models/)")
    ap.add_argument("--splits", default="dev,test")
    ap.add_argument("--colourings", default="original," + ",".join(RECOLOURS))
    ap.add_argument(
        "--record", action="store_true", help="write the figures into the model's evaluation.json (key smear_fields)"
    )
    ap.add_argument("--verbose", action="store_true", help="list the fields with a missed or an extra box")
    args = ap.parse_args(argv)
    root = data_root(args.data)
    if not (root / bccd.BCCD_DIR / "Annotations").is_dir():
        print(f"error: BCCD fields not found under {root / bccd.BCCD_DIR}", file=sys.stderr)
        return 2
    fields = bccd.read_fields(root)
    if bccd.SPLIT_FILE.exists():
        recorded = bccd.read_split()
        wrong = [f.name for f in fields if recorded.get(f.name) != f.split]
        if wrong:
            print(
                f"error: recorded split disagrees with the hash rule for {len(wrong)} fields (e.g. {wrong[0]})",
                file=sys.stderr,
            )
            return 2
    else:
        bccd.write_split(fields)
    clf = Classifier.load(args.model)
    out = {
        "dataset": "BCCD (blood-cells/dataset-master): 640x480 fields, Pascal-VOC WBC boxes, labels.csv classes",
        "split": "hematovision/detection/bccd_split.csv "
        "(sha256 of the field name: dev 70% for tuning, test 30% never tuned on)",
        "iou": bccd.IOU_MATCH,
        "model_version": clf.version,
        "detector_params": vars(DEFAULT_PARAMS).copy(),
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python scripts/field_check.py --record",
        "sets": {},
    }
    for split in args.splits.split(","):
        subset = [f for f in fields if f.split == split]
        for colouring in args.colourings.split(","):
            name = "" if colouring == "original" else colouring
            t0 = time.perf_counter()
            results = list(classify_fields(clf, _inputs(subset, name)))
            secs = time.perf_counter() - t0
            res = bccd.evaluate(subset, results)
            d = res.as_dict()
            d["seconds_per_field"] = round(secs / max(1, len(subset)), 4)
            out["sets"][f"{split}/{colouring}"] = d
            acc = f"{d['class_accuracy']:.1%}" if d["class_accuracy"] is not None else "-"
            ms = d["seconds_per_field"] * 1000
            print(
                f"{split:5s} {colouring:12s} fields {d['fields']:3d}  boxes {d['wbc_boxes']:3d}  "
                f"found {d['found']:3d}  "
                f"recall {d['recall']:.1%}  precision {d['precision']:.1%}  class accuracy {acc} "
                f"({d['class_correct']}/{d['class_found']} of {d['class_fields']})  {ms:.0f} ms/field",
                flush=True,
            )
            if args.verbose:
                print("   missed:", " ".join(res.missed))
                print("   extra: ", " ".join(res.extra))
    if args.record:
        path = model_dir(args.model) / persistence.EVALUATION_FILE
        ev = json.loads(path.read_text())
        ev["smear_fields"] = out
        path.write_text(json.dumps(ev, indent=1) + "\n")
        print(f"recorded in {path} (smear_fields)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
