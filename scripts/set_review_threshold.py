"""Re-choose a model's default review threshold with the current rule, on its validation images.

    .venv/bin/python scripts/set_review_threshold.py [MODEL_DIR] [--data ROOT] [--dry-run]

The rule is ``training.recipe.review_threshold`` (the one ``train`` applies at export): the lowest threshold
whose accepted validation predictions are ``threshold_target_accuracy`` right, lowered to each source's flag
budget (``TrainConfig.threshold_flag_budget``). The probabilities come through the serving path (LiteRT, the
temperature inside), on the validation split of the model's ``split_manifest.csv``; no test image is read.
It updates ``default_threshold`` and the ``threshold`` record of the model card (and ``MODEL_CARD.md``), and
says what changed. Run ``python -m hematovision evaluate --model MODEL_DIR`` afterwards: the evaluation's
flagged shares depend on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hematovision.config import data_root  # noqa: E402
from hematovision.data import datasets as ds  # noqa: E402
from hematovision.imaging.decode import read_rgb  # noqa: E402
from hematovision.modeling import persistence  # noqa: E402
from hematovision.serving.classifier import Classifier  # noqa: E402
from hematovision.training.recipe import TrainConfig, review_threshold  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path, default=REPO / "models")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="print the choice, change nothing")
    args = ap.parse_args()
    root = data_root(args.data)
    card = persistence.load_card(args.model)
    cfg = TrainConfig()
    target = card.threshold.get("target_accuracy", cfg.threshold_target_accuracy)
    cfg.threshold_target_accuracy = target
    val = ds.select(ds.read_manifest(args.model / persistence.MANIFEST_FILE, root), split="val")
    clf = Classifier.load(args.model)
    probs = clf.predict_proba([read_rgb(v.path) for v in val])
    y = np.array([clf.classes_.index(v.label) for v in val])
    thr, capped = review_threshold(probs, y, [v.source for v in val], cfg)
    src = np.array([v.source for v in val])
    print(f"{card.version}: threshold {card.default_threshold:.4f} -> {thr.threshold:.4f} "
          f"(accuracy target {target}; budget {cfg.threshold_flag_budget}; "
          f"{'lowered by the budget from ' + format(capped, '.4f') if capped is not None else 'not capped'})")
    for s in sorted(set(src)):
        p, yy = probs[src == s], y[src == s]
        keep = p.max(1) >= thr.threshold
        right = np.mean(p[keep].argmax(1) == yy[keep])
        print(f"  {s}: flagged {1 - keep.mean():.1%} of {len(yy)}, accepted right {right:.2%}")
    print(f"  all: accepted right {thr.accuracy:.2%} at coverage {thr.coverage:.1%}")
    if args.dry_run:
        return 0

    def change(c):
        c.default_threshold = float(thr.threshold)
        c.threshold.update(
            val_accuracy_accepted=thr.accuracy,
            val_coverage=thr.coverage,
            val_flagged_share=1 - thr.coverage,
            flag_budget=dict(cfg.threshold_flag_budget),
            chosen_by="scripts/set_review_threshold.py (training.recipe.review_threshold) on the validation split "
                      "through the serving path",
        )
        if capped is not None:
            c.threshold["capped_from"] = capped
        else:
            c.threshold.pop("capped_from", None)

    persistence.update_card(args.model, change)
    print(f"updated {args.model / persistence.CARD_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
