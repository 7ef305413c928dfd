"""Exploratory: align a batch's BatchNorm inputs to the training images' moments, without labels (measured, not used).

    .venv/bin/python scripts/bn_align_check.py [--passes K] [--first N] [--families a,b,...]

For a batch from "another laboratory" (validation images under a held-out shift of the stain-shift suite), each
BatchNorm layer's frozen statistics are rewritten so that the batch's per-channel input moments map onto those of
400 training images of the batch's own source:

    var' = (var + eps) * (var_b + eps) / (var_t + eps) - eps,    mean' = mu_b - (mu_t - mean) * sd_b / sd_t

repeated ``K`` times (upstream corrections move the moments downstream); ``--first N`` aligns only the first N
BatchNorm layers. Accuracy per group, as served and aligned. Validation images only (PBC every 2nd, Kaggle every
6th). Results: docs/generalisation.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hematovision.config import data_root  # noqa: E402
from hematovision.data import datasets as ds  # noqa: E402
from hematovision.evaluation.shifts import SUITE  # noqa: E402
from hematovision.imaging.decode import read_rgb  # noqa: E402
from hematovision.imaging.framing import model_input  # noqa: E402
from hematovision.modeling import persistence  # noqa: E402
from hematovision.serving.classifier import Classifier  # noqa: E402


def source_of(item: ds.LabeledImage) -> str:
    return "pbc" if "/pbc/" in str(item.path) else "kaggle"


class Aligner:
    """The network's BatchNorm layers, their original statistics, and the batch moments of their inputs."""

    def __init__(self, net, first: int):
        import keras  # TensorFlow only in this script's run

        self.net = net
        self.bns = [la for la in net.layers if isinstance(la, keras.layers.BatchNormalization)][:first]
        outs = []
        for la in self.bns:
            outs += [keras.ops.mean(la.input, axis=(1, 2)), keras.ops.mean(keras.ops.square(la.input), axis=(1, 2))]
        self.stats = keras.Model(net.input, outs)
        self.orig = [[w.copy() for w in la.get_weights()] for la in self.bns]

    def moments(self, x: np.ndarray, bs: int = 64) -> tuple[list, list]:
        sums, n = None, 0
        for b in range(0, len(x), bs):
            out = [v.astype(np.float64).sum(0) for v in self.stats.predict(x[b:b + bs], verbose=0)]
            sums = out if sums is None else [a + c for a, c in zip(sums, out)]
            n += len(x[b:b + bs])
        mu = [sums[2 * i] / n for i in range(len(self.bns))]
        var = [np.maximum(sums[2 * i + 1] / n - mu[i] ** 2, 0.0) for i in range(len(self.bns))]
        return mu, var

    def restore(self) -> None:
        for la, w in zip(self.bns, self.orig):
            la.set_weights(w)

    def align(self, x: np.ndarray, target: tuple[list, list], passes: int) -> None:
        mu_t, var_t = target
        self.restore()
        for _ in range(passes):
            mu_b, var_b = self.moments(x)
            for i, la in enumerate(self.bns):
                g, b, m, v = self.orig[i]
                eps = la.epsilon
                r = np.sqrt((var_b[i] + eps) / (var_t[i] + eps))
                v2 = np.maximum((v + eps) * r**2 - eps, 1e-6)
                la.set_weights([g, b, (mu_b[i] - (mu_t[i] - m) * r).astype(np.float32), v2.astype(np.float32)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--first", type=int, default=10**6, help="align only the first N BatchNorm layers")
    ap.add_argument("--families", default="hue_90,restain_rapid,lab_rapid_tight")
    args = ap.parse_args()
    clf = Classifier.load(REPO / "models")
    size, framing, classes = clf.input_size, clf.framing, clf.classes_

    def framed(rgbs):
        return np.stack([model_input(x, size, framing) for x in rgbs]).astype(np.float32)

    manifest = ds.read_manifest(REPO / "models" / persistence.MANIFEST_FILE, data_root())
    al = Aligner(clf.network, args.first)
    rng = np.random.default_rng(0)
    targets = {}
    for s in ("pbc", "kaggle"):
        train = [i for i in manifest if i.split == "train" and source_of(i) == s]
        targets[s] = al.moments(framed([read_rgb(train[j].path) for j in rng.choice(len(train), 400, replace=False)]))
    val = {s: [i for i in manifest if i.split == "val" and source_of(i) == s] for s in ("pbc", "kaggle")}
    val = {"pbc": val["pbc"][::2], "kaggle": val["kaggle"][::6]}
    rgbs = {s: [read_rgb(i.path) for i in v] for s, v in val.items()}
    labels = {s: np.array([classes.index(i.label) for i in v]) for s, v in val.items()}
    groups = [("none", s, None) for s in ("pbc", "kaggle")]
    groups += [(f.name, s, f) for f in SUITE if f.name in args.families.split(",") for s in ("pbc", "kaggle")
               if not (f.geometry and s != "pbc")]
    print(f"passes {args.passes}, BatchNorm layers aligned: {len(al.bns)}\n")
    print("| group | n | as served | aligned to its source's training images |")
    print("|---|---:|---:|---:|")
    t0 = time.time()
    for name, s, fam in groups:
        x = framed(rgbs[s] if fam is None else [fam.apply(im, j) for j, im in enumerate(rgbs[s])])
        al.restore()
        served = np.mean(clf.network.predict(x, batch_size=64, verbose=0).argmax(1) == labels[s])
        al.align(x, targets[s], args.passes)
        aligned = np.mean(clf.network.predict(x, batch_size=64, verbose=0).argmax(1) == labels[s])
        al.restore()
        print(f"| {name} on {s} val | {len(x)} | {served:.1%} | {aligned:.1%} |  ({time.time() - t0:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
