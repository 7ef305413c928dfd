"""What the batch hold does to "accepted predictions right", on validation images and their shifted copies only.

    .venv/bin/python scripts/hold_check.py [MODEL_DIR] [--data ROOT] [--draws 300]

Issue 19's bar: on each other laboratory, accepted (unflagged) predictions are at least 90% right, unless under 10%
are accepted and the batch warning fired. With the batch hold (``classify``'s default), a batch the rule calls
shifted has nothing accepted. This draws random batches (50 and 200 images, and the whole group) from each group of
``scripts/threshold_check.py``'s cache: PBC and Kaggle validation (in-domain) and their copies under each held-out
family of the stain-shift suite (each standing for one laboratory), applies the served verdict
(``stats.domain_shift`` with the model's ``trust.npz``: validation scores and sources) and the model's review
threshold, and reports per group: batches called shifted, the accepted share, accepted predictions right, and the
share of batches that meet the bar, with the hold and without it. Reads no test set.

The batch rule's floors were chosen on these validation images (docs/trust.md), so the detection rates here are
not out-of-sample for the rule; the accuracy figures are the model's own on images it was not trained on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from threshold_check import cached  # noqa: E402

from hematovision.config import data_root  # noqa: E402
from hematovision.serving.classifier import Classifier  # noqa: E402
from hematovision.stats.domain_shift import domain_shift  # noqa: E402

BAR_RIGHT, BAR_ACCEPTED = 0.90, 0.10


def batch_outcome(y, p, u, s, src, threshold: float, trust) -> tuple[bool, int, int]:
    """``(called shifted, accepted, accepted and right)`` of one batch without the hold."""
    v = domain_shift(u, trust.expected_share, scores=s, reference=trust.val_scores,
                     sources=src if all(src) else None, reference_sources=trust.val_sources)
    keep = (p.max(1) >= threshold) & ~u
    return v.detected, int(keep.sum()), int((keep & (p.argmax(1) == y)).sum())


def meets_bar(fired: bool, accepted: int, right: int, n: int) -> bool:
    return (not accepted or right / accepted >= BAR_RIGHT) or (fired and accepted / n < BAR_ACCEPTED)


def group_rows(name: str, d: dict, threshold: float, trust, draws: int, rng) -> list[str]:
    y, p, u, s, src = (d[f"{name}/{k}"] for k in ("y", "p", "u", "s", "src"))
    rows = []
    for size in [k for k in (50, 200) if k < len(y)] + [len(y)]:
        whole = size == len(y)
        picks = [np.arange(size)] if whole else [rng.choice(len(y), size, replace=False) for _ in range(draws)]
        out = [batch_outcome(y[i], p[i], u[i], s[i], src[i], threshold, trust) for i in picks]
        fired = np.array([o[0] for o in out])
        acc = np.array([o[1] for o in out])
        right = np.array([o[2] for o in out])
        held_acc = np.where(fired, 0, acc)
        held_right = np.where(fired, 0, right)
        bar_without = np.mean([meets_bar(f, a, r, size) for f, a, r in zip(fired, acc, right)])
        bar_with = np.mean([meets_bar(f, a, r, size) for f, a, r in zip(fired, held_acc, held_right)])
        label = f"whole ({size})" if whole else str(size)
        rows.append(
            f"| {name.removeprefix('shift/')} | {label} | {fired.mean():.0%} | {acc.sum() / (size * len(picks)):.0%} | "
            f"{right.sum() / max(acc.sum(), 1):.1%} | {bar_without:.0%} | {held_acc.sum() / (size * len(picks)):.0%} | "
            f"{held_right.sum() / max(held_acc.sum(), 1):.1%} | {bar_with:.0%} |"
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path, default=REPO / "models")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--draws", type=int, default=300)
    args = ap.parse_args()
    clf = Classifier.load(args.model)
    if clf.trust is None:
        raise SystemExit(f"{args.model} has no trust.npz: nothing to hold on")
    d = cached(clf, args.model, data_root(args.data))
    threshold = clf.default_threshold
    groups = ["pbc_val", "kaggle_val"] + sorted({k.rsplit("/", 1)[0] for k in d if k.startswith("shift/")})
    print(f"{clf.version}, review threshold {threshold:.3f}, {args.draws} random batches per size\n")
    print("| group | batch | called shifted | without hold: accepted | accepted right | bar met | "
          "with hold: accepted | accepted right | bar met |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for g in groups:
        for row in group_rows(g, d, threshold, clf.trust, args.draws, rng):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
