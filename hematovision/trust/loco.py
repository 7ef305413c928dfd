"""Leave-one-class-out: is a white-cell type the model never learnt flagged? (issue 19's first bar, docs/trust.md)

This project has no images of PBC's other cell types (basophils, immature granulocytes, erythroblasts, platelets),
so the bar "PBC's other cell types flagged >= 80%, with <= 8% of our in-domain PBC hold-out flagged" is predicted by
models trained with one class left out (``train --exclude-classes``) and their unfamiliar score fitted without it
(``fit-trust`` reads the exclusion from the card): the held-out class's validation images stand for the cell type the
model never learnt; the other classes' validation images are the in-domain hold-out.

:func:`extract` runs every validation image of the model's split manifest (every class, both sources) through the
served classifier once (probabilities and pooled features, as ``classify`` computes them) and recovers the logits
from the features (the network's ``logits`` layer) for the energy variant; :func:`measure` scores them with the
model's own ``trust.npz`` (as served) and with a few variants built from the same fitted banks, each variant's scales
and threshold fitted on the in-domain validation images exactly as ``fit-trust`` fits the served score.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import data_root
from ..data import datasets as ds
from ..modeling import persistence, unfamiliar
from ..modeling.network import LOGITS_LAYER
from ..modeling.unfamiliar import TrustModel
from ..serving.classifier import Classifier
from ..stats import round_threshold, wilson_interval
from .fit import BANK_SIZE, bank_images, features_of, fitted_classes, read_all

#: Ridge added to the shared covariance of the Mahalanobis variant (the projected features are unit vectors in 256
#: dimensions; the smallest eigenvalues of the within-class covariance are near zero).
MAHALANOBIS_RIDGE = 1e-3


@dataclass
class LocoFeatures:
    """What one leave-one-class-out model says about every validation image of its split manifest."""

    model_dir: str
    version: str
    held_out: list[str]  # the classes the model was trained without
    review_threshold: float  # the card's, rounded as served
    labels: np.ndarray  # (n,) str
    sources: np.ndarray  # (n,) str
    groups: np.ndarray  # (n,) str: the original cell (Kaggle: a field's augmented copies share it)
    probs: np.ndarray  # (n, classes) calibrated, as served
    features: np.ndarray  # (n, 1280) pooled
    logits: np.ndarray  # (n, classes) before the temperature
    bank_labels: np.ndarray  # (m,) the class of each trust-bank row (rebuilt as fit-trust drew the bank)
    seconds: float = 0.0

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez_compressed(path, model_dir=self.model_dir, version=self.version, held_out=np.array(self.held_out),
                            review_threshold=self.review_threshold, labels=self.labels, sources=self.sources,
                            groups=self.groups, probs=self.probs, features=self.features.astype(np.float32),
                            logits=self.logits, bank_labels=self.bank_labels, seconds=self.seconds)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LocoFeatures:
        with np.load(path, allow_pickle=False) as z:
            return cls(str(z["model_dir"]), str(z["version"]), [str(c) for c in z["held_out"]],
                       float(z["review_threshold"]), z["labels"].astype(str), z["sources"].astype(str),
                       z["groups"].astype(str), z["probs"], z["features"].astype(np.float32), z["logits"],
                       z["bank_labels"].astype(str), float(z["seconds"]))


def extract(model_dir: str | Path, data: str | Path | None = None,
            progress: Callable[[int], None] | None = None) -> LocoFeatures:
    """Probabilities, pooled features and logits of every validation image (every class) through the model."""
    t0 = time.time()
    model_dir = Path(model_dir)
    root = data_root(data)
    clf = Classifier.load(model_dir)
    card = clf.card
    held_out = [c for c in card.classes if c not in fitted_classes(card)]
    if not held_out:
        raise ValueError(f"{model_dir} was trained on every class: train it with --exclude-classes")
    if clf.trust is None:
        raise ValueError(f"{model_dir} has no usable trust.npz: run fit-trust on it first")
    manifest = ds.read_manifest(model_dir / persistence.MANIFEST_FILE, root)
    val = ds.select(manifest, split="val")
    probs, feats = features_of(clf, read_all(val), progress=progress)
    if len(probs) != len(val):
        raise ValueError(f"{len(val) - len(probs)} validation images could not be read")
    kernel, bias = clf.network.get_layer(LOGITS_LAYER).get_weights()
    logits = feats.astype(np.float64) @ kernel + bias
    # the bank as fit-trust drew it (same manifest, classes and seed), for the class-conditional variant
    bank = bank_images([m for m in manifest if m.label in fitted_classes(card)], BANK_SIZE, 0)
    if len(bank) != len(clf.trust.bank):
        raise ValueError(f"rebuilt bank has {len(bank)} rows, trust.npz {len(clf.trust.bank)}: fitted otherwise?")
    return LocoFeatures(str(model_dir), clf.version, held_out, clf.default_threshold,
                        np.array([v.label for v in val]), np.array([v.source for v in val]),
                        np.array([v.group for v in val]), probs, feats, logits, np.array([b.label for b in bank]),
                        time.time() - t0)


# ---------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One unfamiliarity score: a weighted sum of standardised components (``knn`` at ``k``, ``outlier``,
    ``uncertainty`` = 1 - max probability, ``mahalanobis``, ``energy`` = -logsumexp(logits))."""

    name: str
    weights: dict = field(default_factory=dict)
    k: int = unfamiliar.DEFAULT_K

    def components(self, tm: TrustModel, feats: np.ndarray, probs: np.ndarray, logits: np.ndarray,
                   maha: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
        f = tm.embed(feats)
        out: dict[str, np.ndarray] = {}
        for name in self.weights:
            if name == "knn":
                out[name] = unfamiliar.kth_distance(f, tm.bank, self.k)
            elif name == "outlier":
                out[name] = -unfamiliar.kth_distance(f, tm.outlier_bank, self.k)
            elif name == "uncertainty":
                out[name] = 1.0 - np.asarray(probs, np.float64).max(axis=1)
            elif name == "energy":
                z = np.asarray(logits, np.float64)
                m = z.max(axis=1)
                out[name] = -(m + np.log(np.exp(z - m[:, None]).sum(axis=1)))
            elif name == "mahalanobis":
                means, precision = maha
                d = f[:, None, :] - means[None]  # (n, classes, dims)
                out[name] = np.einsum("ncd,de,nce->nc", d, precision, d).min(axis=1)
            else:
                raise ValueError(f"unknown component {name!r}")
        return out


#: The served score first; the others are measured beside it (docs/trust.md, "leave-one-class-out").
VARIANTS = (
    Variant("served: knn k20 + 0.5 outlier", {"knn": 1.0, "outlier": 0.5}),
    Variant("confidence only", {"uncertainty": 1.0}),
    Variant("knn k20 alone", {"knn": 1.0}),
    Variant("knn k5 + 0.5 outlier", {"knn": 1.0, "outlier": 0.5}, k=5),
    Variant("knn k50 + 0.5 outlier", {"knn": 1.0, "outlier": 0.5}, k=50),
    Variant("served + 0.5 confidence", {"knn": 1.0, "outlier": 0.5, "uncertainty": 0.5}),
    Variant("served + 1.0 confidence", {"knn": 1.0, "outlier": 0.5, "uncertainty": 1.0}),
    Variant("mahalanobis", {"mahalanobis": 1.0}),
    Variant("mahalanobis + 0.5 outlier", {"mahalanobis": 1.0, "outlier": 0.5}),
    Variant("energy", {"energy": 1.0}),
    Variant("served + 0.5 energy", {"knn": 1.0, "outlier": 0.5, "energy": 0.5}),
)


def class_gaussians(bank: np.ndarray, labels: np.ndarray, ridge: float = MAHALANOBIS_RIDGE):
    """Class means and the precision of the shared within-class covariance of (projected, normalised) bank rows."""
    classes = sorted(set(labels))
    means = np.stack([bank[labels == c].mean(axis=0) for c in classes])
    centred = bank - means[[classes.index(c) for c in labels]]
    cov = centred.T.astype(np.float64) @ centred / len(bank)
    return means, np.linalg.inv(cov + ridge * np.eye(cov.shape[0]))


@dataclass
class Share:
    k: int
    n: int

    @property
    def share(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def text(self) -> str:
        lo, hi = self.interval
        return f"{self.share:.1%} ({self.k}/{self.n}; {lo:.1%}-{hi:.1%})"


@dataclass
class VariantResult:
    variant: str
    threshold: float
    in_domain_unfamiliar: Share  # every in-domain validation image (what the threshold was chosen on)
    flagged: dict  # (group, source) -> Share, either reason at the review threshold
    unfamiliar: dict  # (group, source) -> Share
    served_check: float | None = None  # served variant: max |score - trust.npz's score|


def budget_threshold(score: np.ndarray, low_conf: np.ndarray, budget: float) -> float:
    """The lowest threshold on ``score`` at which at most ``budget`` of these images are flagged for either reason
    (``low_conf``: flagged whatever the score); ``inf`` when low confidence alone exceeds the budget."""
    allowed = int(np.floor(budget * len(score) + 1e-9)) - int(low_conf.sum())
    rest = np.sort(np.asarray(score, np.float64)[~low_conf])
    if allowed < 0 or not len(rest):
        return float("inf")
    return float(rest[len(rest) - allowed - 1]) if allowed < len(rest) else float("-inf")


def measure(lf: LocoFeatures, tm: TrustModel, variants=VARIANTS, pbc_flag_budget: float | None = None
            ) -> list[VariantResult]:
    """Each variant fitted on the in-domain validation images (scales: median and IQR; threshold: at most
    :data:`unfamiliar.MAX_UNFAMILIAR_SHARE` of them unfamiliar, as ``fit-trust``) and read on the held-out class's
    and the in-domain images of each source. ``pbc_flag_budget``: the threshold is instead the lowest at which at
    most that share of the in-domain PBC validation images is flagged for either reason (the bar's own budget; the
    held-out class plays no part in choosing it)."""
    held = np.isin(lf.labels, lf.held_out)
    ind = ~held
    maha = None
    if any("mahalanobis" in v.weights for v in variants):
        maha = class_gaussians(tm.bank, lf.bank_labels)
    low_conf = lf.probs.max(axis=1) < lf.review_threshold
    out = []
    for v in variants:
        comps = v.components(tm, lf.features, lf.probs, lf.logits, maha)
        centre, scale = unfamiliar.fit_scales({c: x[ind] for c, x in comps.items()})
        score = sum(v.weights[c] * (comps[c] - centre[c]) / scale[c] for c in v.weights)
        if pbc_flag_budget is None:
            thr = unfamiliar.choose_threshold(score[ind])
        else:
            pbc = ind & (lf.sources == "pbc")
            thr = budget_threshold(score[pbc], low_conf[pbc], pbc_flag_budget)
        unf = score > thr
        check = None
        if v is variants[0] and v.weights == tm.weights and v.k == tm.k and pbc_flag_budget is None:
            check = float(np.max(np.abs(score - tm.score(lf.features, lf.probs))))
        flagged, unfam = {}, {}
        for group, mask in (("held_out", held), ("in_domain", ind)):
            for src in ("pbc", "kaggle"):
                m = mask & (lf.sources == src)
                flagged[(group, src)] = Share(int((unf | low_conf)[m].sum()), int(m.sum()))
                unfam[(group, src)] = Share(int(unf[m].sum()), int(m.sum()))
        out.append(VariantResult(v.name, float(thr), Share(int(unf[ind].sum()), int(ind.sum())), flagged, unfam,
                                 check))
    return out


def table(lf: LocoFeatures, results: list[VariantResult], with_unfamiliar: bool = False) -> str:
    """The results as a Markdown table (share, count and 95% Wilson interval); ``with_unfamiliar``: a column with
    the share of every in-domain validation image called unfamiliar."""
    held = ", ".join(lf.held_out)
    n_groups = {s: len(set(lf.groups[np.isin(lf.labels, lf.held_out) & (lf.sources == s)])) for s in ("pbc", "kaggle")}
    lines = [
        f"{lf.version}, trained without {held}; review threshold {round_threshold(lf.review_threshold)}; "
        f"held-out {held} validation images: PBC {n_groups['pbc']} cells, Kaggle {n_groups['kaggle']} cells "
        "(augmented copies share one)",
        "",
        "| variant | held-out PBC flagged | held-out PBC unfamiliar | held-out Kaggle flagged | held-out Kaggle "
        "unfamiliar | in-domain PBC flagged | in-domain Kaggle flagged |"
        + (" in-domain unfamiliar |" * with_unfamiliar),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" * with_unfamiliar),
    ]
    for r in results:
        lines.append(
            f"| {r.variant} | {r.flagged[('held_out', 'pbc')].text()} | {r.unfamiliar[('held_out', 'pbc')].text()} | "
            f"{r.flagged[('held_out', 'kaggle')].text()} | {r.unfamiliar[('held_out', 'kaggle')].text()} | "
            f"{r.flagged[('in_domain', 'pbc')].text()} | {r.flagged[('in_domain', 'kaggle')].text()} |"
            + (f" {r.in_domain_unfamiliar.text()} |" if with_unfamiliar else "")
        )
    return "\n".join(lines)


def predicted_as(lf: LocoFeatures, source: str) -> dict[str, int]:
    """What the model calls the held-out class's images of one source (class -> count)."""
    m = np.isin(lf.labels, lf.held_out) & (lf.sources == source)
    classes = persistence.load_card(lf.model_dir).classes
    pred = lf.probs[m].argmax(axis=1)
    return {c: int((pred == k).sum()) for k, c in enumerate(classes)}
