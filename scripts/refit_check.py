"""Refit or not, judged without a test set: the shipped recipe's two arms on an inner test of Kaggle TRAIN fields.

    .venv/bin/python scripts/refit_check.py FOLD [--work DIR] [--cache DIR]    # ~20 min a fold on the 2-core CPU

`train --refit` ships a model refitted on train + validation for the epochs an early-stopped selection
run chose. Whether that beats the selection run itself cannot be read off the test sets without choosing
on them. Here, per fold, a fifth of each Kaggle class's *train* fields (ranked by
``sha256("outer<FOLD>/<class>/<field>")``) is set aside as an inner test; the validation split is
unchanged. Arm A is the recipe early-stopped on validation (as the selection run); arm B is its refit
on train + validation (as the shipped model). Both are scored on the inner test: image accuracy,
fields voted right by majority, per class. The test sets are never read. Writes ``result.json`` in
``--work`` (default ``.cache/refit-check-f<FOLD>``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hematovision.config import TRAINING_CLASSES  # noqa: E402
from hematovision.data import datasets as ds  # noqa: E402
from hematovision.modeling.features import predict_logits_keras  # noqa: E402
from hematovision.training import recipe as tr  # noqa: E402


def with_inner_test(discover, fold: int, share: float = 0.2):
    """``discover`` with a fifth of each class's Kaggle train fields relabelled ``inner_test`` (never trained on)."""
    def wrapped(root):
        images = discover(root)
        fields: dict[str, set] = {}
        for i in images:
            if i.source == "kaggle" and i.split == "train":
                fields.setdefault(i.label, set()).add(i.group)
        out = set()
        for c, groups in fields.items():
            ranked = sorted(groups, key=lambda g: hashlib.sha256(f"outer{fold}/{c}/{g}".encode()).hexdigest())
            out |= set(ranked[:max(1, round(share * len(ranked)))])
        return [replace(i, split="inner_test") if i.split == "train" and i.group in out else i for i in images]
    return wrapped


def score(network, images, cfg) -> dict:
    y = np.array([TRAINING_CLASSES.index(i.label) for i in images])
    right = predict_logits_keras(network, [i.path for i in images], cfg.input_size, cfg.framing).argmax(1) == y
    by_field: dict[str, list] = {}
    for i, r in zip(images, right):
        by_field.setdefault(i.group, []).append(r)
    return {"images": float(right.mean()), "fields_majority": int(sum(np.mean(v) > 0.5 for v in by_field.values())),
            "per_class": {c: float(right[y == k].mean()) for k, c in enumerate(TRAINING_CLASSES)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("fold", type=int)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--cache", type=Path, default=Path(".cache/features"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = args.work or Path(f".cache/refit-check-f{args.fold}")
    tr.ds.discover = with_inner_test(ds.discover, args.fold)
    cfg = tr.TrainConfig(max_epochs=20)
    t0 = time.time()
    sel = tr.fit(work / "selection", cfg, cache_root=args.cache)
    inner = [i for i in sel.images if i.split == "inner_test"]
    tr.export(sel, work / "selection-model", cfg, name="refit-check-selection")
    refit_cfg = tr.refit_config(work / "selection-model", cfg)
    ref = tr.fit(work / "refit", refit_cfg, cache_root=args.cache)
    res = {"fold": args.fold, "inner_images": len(inner), "inner_fields": len({i.group for i in inner}),
           "refit_epochs": refit_cfg.refit_finetune_epochs,
           "selection": score(sel.network, inner, cfg), "refit": score(ref.network, inner, cfg),
           "seconds": round(time.time() - t0)}
    (work / "result.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
