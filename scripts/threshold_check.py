"""What a review threshold costs and buys, on validation images only: the flagged share in-domain per source,
and how right the accepted (unflagged) predictions are under the stain-shift suite's held-out shifts.

    .venv/bin/python scripts/threshold_check.py [MODEL_DIR ...] [--data ROOT] [--thresholds 0.8,0.9,...]

For each model (default: the shipped ``models/``), classifies through the serving path (``Classifier``: LiteRT,
the model's framing, its trust statistics when it has them) every validation image of its split manifest and,
for the shifted groups, PBC validation images (every 2nd) and Kaggle validation images (every 6th) under each
held-out family of ``evaluation.shifts.SUITE``. Then, per threshold: the share flagged for either reason
(below the threshold, or unfamiliar) on PBC and Kaggle validation, the accuracy of the accepted predictions
there, and over the shifted groups the accepted share and the accuracy of what is accepted (pooled, and the
worst family). This is how the review threshold is chosen against issue 19's bars (in-domain flagged share,
accepted predictions right on other laboratories) without reading a test set. Results are cached per model
version in ``.cache/threshold/``.
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
from hematovision.evaluation.shifts import SUITE  # noqa: E402
from hematovision.imaging.decode import read_rgb  # noqa: E402
from hematovision.modeling import persistence  # noqa: E402
from hematovision.serving.classifier import Classifier  # noqa: E402

CACHE = REPO / ".cache" / "threshold"


def _groups(model_dir: Path, root: Path) -> dict[str, list[ds.LabeledImage]]:
    manifest = ds.read_manifest(model_dir / persistence.MANIFEST_FILE, root)
    return {
        "pbc_val": ds.select(manifest, source="pbc", split="val"),
        "kaggle_val": ds.select(manifest, source="kaggle", split="val"),
    }


def extract(clf: Classifier, model_dir: Path, root: Path) -> dict[str, np.ndarray]:
    """Per group: true class, predicted probabilities, unfamiliar flag (False without trust statistics); with
    them also the unfamiliarity scores and each image's nearest training source."""
    out = {}
    groups = _groups(model_dir, root)
    decoded = {k: [read_rgb(i.path) for i in v] for k, v in groups.items()}
    labels = {k: np.array([clf.classes_.index(i.label) for i in v]) for k, v in groups.items()}

    def run(name, rgbs, y):
        probs, feats = clf.proba_and_features(rgbs)
        scores = clf.unfamiliarity(probs, feats)
        odd = np.zeros(len(y), bool) if scores is None else np.array([clf.trust.unfamiliar(s) for s in scores])
        out[f"{name}/y"], out[f"{name}/p"], out[f"{name}/u"] = y, probs, odd
        if scores is not None:  # for the batch rule (scripts/hold_check.py): the scores and each nearest source
            near = clf.trust.nearest_source(feats)
            out[f"{name}/s"] = scores
            out[f"{name}/src"] = np.full(len(y), "") if near is None else np.asarray(near, str)
        print(f"  {name:36s} n={len(y):5d} acc={np.mean(probs.argmax(1) == y):.1%} unfamiliar={odd.mean():.1%}",
              flush=True)

    for k in groups:
        run(k, decoded[k], labels[k])
    for fam in SUITE:
        if not fam.held_out:
            continue
        for k, stride in (("pbc_val", 2), ("kaggle_val", 6)):
            if fam.geometry and k != "pbc_val":
                continue
            rgbs = decoded[k][::stride]
            run(f"shift/{fam.name}/{k}", [fam.apply(x, j) for j, x in enumerate(rgbs)], labels[k][::stride])
    return out


def table(data: dict[str, np.ndarray], thresholds: list[float]) -> str:
    shifted = sorted({k.rsplit("/", 1)[0] for k in data if k.startswith("shift/")})
    lines = [
        "| threshold | PBC val flagged | PBC val accepted right | Kaggle val flagged | Kaggle val accepted right "
        "| shifted: accepted | shifted: accepted right | worst shifted group: accepted right |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in thresholds:
        row = [f"{t:.3f}"]
        for g in ("pbc_val", "kaggle_val"):
            y, p, u = data[f"{g}/y"], data[f"{g}/p"], data[f"{g}/u"]
            flagged = (p.max(1) < t) | u
            ok = p.argmax(1) == y
            row += [f"{flagged.mean():.1%}", f"{ok[~flagged].mean():.1%}" if (~flagged).any() else "-"]
        acc_n = acc_ok = total = 0
        worst = (2.0, "")
        for g in shifted:
            y, p, u = data[f"{g}/y"], data[f"{g}/p"], data[f"{g}/u"]
            keep = (p.max(1) >= t) & ~u
            ok = (p.argmax(1) == y) & keep
            acc_n, acc_ok, total = acc_n + keep.sum(), acc_ok + ok.sum(), total + len(y)
            if keep.sum() >= 10:
                worst = min(worst, (ok.sum() / keep.sum(), g.removeprefix("shift/")))
        row += [f"{acc_n / total:.1%}", f"{acc_ok / max(acc_n, 1):.1%}", f"{worst[0]:.1%} ({worst[1]})"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def cached(clf: Classifier, model_dir: Path, root: Path) -> dict[str, np.ndarray]:
    """:func:`extract`'s arrays, from ``.cache/threshold/VERSION-v2.npz`` when there (v2: with scores and sources)."""
    cache = CACHE / f"{clf.version.replace('@', '-')}-v2.npz"
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    print(f"{clf.version}: classifying validation images and their shifted copies", flush=True)
    data = extract(clf, model_dir, root)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path, default=[REPO / "models"])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--thresholds", default="0.5,0.7,0.8,0.85,0.9,0.92,0.94,0.95,0.96,0.97,0.98")
    args = ap.parse_args()
    root = data_root(args.data)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    for model_dir in args.models:
        clf = Classifier.load(model_dir)
        data = cached(clf, Path(model_dir), root)
        print(f"\n{clf.version} (its review threshold {clf.default_threshold:.3f})\n")
        print(table(data, sorted(set(thresholds + [round(clf.default_threshold, 3)]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
