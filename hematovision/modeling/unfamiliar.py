"""Is this image like the white cells the model was trained on? A per-image unfamiliarity score.

The score comes from the network's own forward pass (the pooled penultimate features and the
calibrated probabilities that :class:`~hematovision.serving.classifier.Classifier` already computes):

* ``knn``: the cosine distance from the image's L2-normalised pooled features (projected on the bank's
  first :data:`PCA_DIMS` principal axes and re-normalised, for speed) to its
  :attr:`TrustModel.k`-th nearest neighbour in a bank of training images' features (Sun et al.,
  "Out-of-distribution detection with deep nearest neighbors", ICML 2022);
* ``uncertainty``: ``1 - max probability``;
* ``outlier``: minus the distance to the k-th nearest neighbour in a bank of examples of what is not
  a white cell (red cells, platelets, background, blurred and cut cells; :mod:`hematovision.trust.outliers`), when the
  model's trust file has one.

Each component is standardised by its median and inter-quartile range on the validation images, and
the score is their weighted sum (:data:`WEIGHTS`; chosen by measurement, see docs/trust.md).
An image is *unfamiliar* when its score is above :attr:`TrustModel.threshold`, chosen on the
validation images so that at most :data:`MAX_UNFAMILIAR_SHARE` of them are called unfamiliar.

Everything lives in ``trust.npz`` beside the model (:func:`save` / :func:`load`); a model without
one is served as before, without the unfamiliar column's verdicts. This module is what is saved with
the model and read when serving (numpy only, so it sits below ``serving``); fitting it from a model's
images (``fit-trust``), the batch rule's use and the measurements are :mod:`hematovision.trust`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("hematovision.trust")

TRUST_FILE = "trust.npz"
#: An adapted version's labeled cells as the adapted network sees them (pooled features of each labeled image's
#: views, the clean one first; the clean view's probabilities): in-domain for that version, so its unfamiliar-score
#: refit (``fit-trust``) adds them to the bank and to validation. Features only, never the lab's images.
LAB_FILE = "lab_features.npz"
#: The largest share of in-domain validation images the threshold may call unfamiliar.
MAX_UNFAMILIAR_SHARE = 0.05
#: Neighbour rank for the distance (Sun et al. use k = 50 for ImageNet's 1.2 M images and less for small banks).
#: Chosen on validation halves and validation-derived proxies for hematovision@10dcfb23eb1d (docs/trust.md,
#: scripts/trust_check.py): with the outlier term, k 20 beat k 10 (the earlier model's choice) on both the mean
#: unfamiliar share of what is not a white cell (83.6% against 79.9%) and of the stain shifts (18.8% vs 18.6%).
DEFAULT_K = 20
#: Weight of each standardised component in the score. Measured on both models (docs/trust.md): the k-NN distance
#: alone beat confidence alone on every kind of outlier and stain shift; adding the uncertainty term lowered the
#: stain shifts' unfamiliar share (confidence already flags its own cases: ``flag_reason`` low_confidence), so it
#: is left out; the outlier bank raised red cells, platelets, blur and cuts.
WEIGHTS = {"knn": 1.0, "outlier": 0.5}
#: Dimensions kept by the projection of the normalised features on their principal axes (uncentred) before the
#: k-NN search (None: all 1280).
#: Measured (docs/trust.md): 256 keeps detection within a few points and makes the search ~5x cheaper.
PCA_DIMS = 256
#: Bump when the score's definition changes: a trust file of another format is ignored.
FORMAT = 1


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


_CONTROLLER: list = []


def _one_blas_thread():
    """A context with one BLAS thread: on a busy 2-core machine OpenBLAS's threads spin against the image
    decoders and the interpreters (measured: the bank product 4.4 ms/image with 2 threads, 1.3 with 1).
    The controller is built once: ``threadpool_limits`` re-scans the loaded libraries on every call (~4 ms)."""
    if not _CONTROLLER:
        try:
            # a scikit-learn dependency; imported (and its library scan run) on first use only
            from threadpoolctl import ThreadpoolController

            _CONTROLLER.append(ThreadpoolController())
        except Exception:  # pragma: no cover - no threadpoolctl: BLAS keeps its own threads
            _CONTROLLER.append(None)
    ctl = _CONTROLLER[0]
    return contextlib.nullcontext() if ctl is None else ctl.limit(limits=1, user_api="blas")


def kth_distance(queries: np.ndarray, bank: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """Cosine distance (``1 - cos``) from each L2-normalised query row to its k-th nearest bank row."""
    q = np.asarray(queries, np.float32)
    out = np.empty(len(q), np.float32)
    k = max(1, min(int(k), len(bank)))
    with _one_blas_thread():
        for b in range(0, len(q), chunk):
            sims = q[b : b + chunk] @ bank.T
            out[b : b + chunk] = 1.0 - np.partition(sims, sims.shape[1] - k, axis=1)[:, sims.shape[1] - k]
    return out


def nearest_row(queries: np.ndarray, bank: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Index of each L2-normalised query row's nearest bank row (cosine)."""
    q = np.asarray(queries, np.float32)
    out = np.empty(len(q), np.int64)
    with _one_blas_thread():
        for b in range(0, len(q), chunk):
            out[b : b + chunk] = (q[b : b + chunk] @ bank.T).argmax(axis=1)
    return out


def choose_threshold(val_scores: np.ndarray, max_share: float = MAX_UNFAMILIAR_SHARE) -> float:
    """The lowest threshold with ``mean(val_scores > threshold) <= max_share`` among the validation scores."""
    s = np.sort(np.asarray(val_scores, np.float64))
    if not len(s):
        raise ValueError("no validation scores to choose a threshold on")
    allowed = int(np.floor(max_share * len(s) + 1e-9))
    return float(s[len(s) - allowed - 1])


@dataclass
class TrustModel:
    """The fitted statistics; :meth:`score` maps (features, probabilities) to unfamiliarity."""

    bank: np.ndarray  # (m, F) L2-normalised training features (float32 in memory, float16 on disk)
    k: int
    centre: dict  # component -> median on validation
    scale: dict  # component -> inter-quartile range on validation
    weights: dict
    threshold: float = float("inf")
    val_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # sorted
    outlier_bank: np.ndarray | None = None
    model_sha256: str = ""
    record: dict = field(default_factory=dict)  # how it was fitted and what it measured
    projection: np.ndarray | None = None  # (F, d) principal axes; the banks are stored projected and re-normalised
    #: The data source of each bank row and of each (sorted) validation score, when the fit recorded them: the
    #: batch rule then ranks each image among the validation scores of its nearest bank image's source.
    bank_sources: np.ndarray | None = None
    val_sources: np.ndarray | None = None

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Features as the banks hold them: L2-normalised, projected (when there is a projection), re-normalised."""
        f = l2_normalise(features)
        if self.projection is None:
            return f
        with _one_blas_thread():
            return l2_normalise(f @ self.projection)

    @property
    def expected_share(self) -> float:
        """Share of validation images above the threshold (at most :data:`MAX_UNFAMILIAR_SHARE`)."""
        return float(np.mean(self.val_scores > self.threshold)) if len(self.val_scores) else MAX_UNFAMILIAR_SHARE

    def components(self, features: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
        f = self.embed(features)
        out = {
            "knn": kth_distance(f, self.bank, self.k),
            "uncertainty": 1.0 - np.asarray(probs, np.float64).max(axis=1),
        }
        if self.outlier_bank is not None and "outlier" in self.weights:
            out["outlier"] = -kth_distance(f, self.outlier_bank, self.k)
        return out

    def combine(self, comps: dict[str, np.ndarray]) -> np.ndarray:
        total = np.zeros(len(next(iter(comps.values()))), np.float64)
        for name, w in self.weights.items():
            if name in comps:
                total += w * (np.asarray(comps[name], np.float64) - self.centre[name]) / self.scale[name]
        return total

    def score(self, features: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Unfamiliarity per image (higher: less like the training images); 0 is a typical validation image."""
        if len(features) == 0:
            return np.zeros(0)
        return self.combine(self.components(features, probs))

    def unfamiliar(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    @property
    def has_sources(self) -> bool:
        return (
            self.bank_sources is not None
            and self.val_sources is not None
            and len(self.bank_sources) == len(self.bank)
            and len(self.val_sources) == len(self.val_scores)
        )

    def nearest_source(self, features: np.ndarray) -> np.ndarray | None:
        """The source of each image's nearest training-bank image (``None`` when the fit recorded no sources)."""
        if not self.has_sources or len(features) == 0:
            return None
        return np.asarray(self.bank_sources)[nearest_row(self.embed(features), self.bank)]


def fit_scales(comps: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Median and inter-quartile range of each component (on validation images; the standard deviation where the
    quartiles coincide, and never below 1e-3)."""
    centre, scale = {}, {}
    for name, v in comps.items():
        v = np.asarray(v, np.float64)
        q1, q2, q3 = np.percentile(v, [25, 50, 75])
        centre[name] = float(q2)
        scale[name] = float(
            max(q3 - q1 if q3 > q1 else v.std(), 1e-3)
        )  # a floor: a constant component must not explode
    return centre, scale


def fit(
    bank_features: np.ndarray,
    val_features: np.ndarray,
    val_probs: np.ndarray,
    *,
    k: int = DEFAULT_K,
    outlier_features: np.ndarray | None = None,
    weights: dict | None = None,
    max_share: float = MAX_UNFAMILIAR_SHARE,
    model_sha256: str = "",
    dims: int | None = PCA_DIMS,
    bank_sources: np.ndarray | None = None,
    val_sources: np.ndarray | None = None,
) -> TrustModel:
    """A :class:`TrustModel` from a training bank, validation images and (optionally) outlier examples.

    ``dims``: PCA dimensions kept for the search (fitted on the bank; ``None`` or >= the feature width: no
    projection). ``bank_sources`` / ``val_sources``: each bank / validation image's data source (optional; the
    batch rule's source-matched reference).
    """
    if len(bank_features) == 0 or len(val_features) == 0:
        raise ValueError("fitting the unfamiliar score needs training (bank) and validation features")
    weights = dict(WEIGHTS if weights is None else weights)
    tm = TrustModel(np.zeros((0, 0), np.float32), int(k), {}, {}, weights, model_sha256=model_sha256)
    nb = l2_normalise(bank_features)
    if dims is not None and dims < min(nb.shape):
        # uncentred: the leading axis is the features' common direction, so cosine similarities survive the cut.
        # One BLAS thread: on the busy 2-core machine the SVD of a 1,660 x 1,280 bank took 20 s with two, 1.7 s with one
        with _one_blas_thread():
            _, _, vt = np.linalg.svd(nb.astype(np.float64), full_matrices=False)
        tm.projection = vt[:dims].T.astype(np.float16).astype(np.float32)  # as stored
    tm.bank = tm.embed(bank_features).astype(np.float16).astype(np.float32)
    if outlier_features is not None and len(outlier_features):
        tm.outlier_bank = tm.embed(outlier_features).astype(np.float16).astype(np.float32)
    else:
        weights.pop("outlier", None)
    comps = tm.components(val_features, val_probs)
    tm.centre, tm.scale = fit_scales(comps)
    scores = tm.combine(comps)
    tm.threshold = choose_threshold(scores, max_share)
    order = np.argsort(scores, kind="stable")
    tm.val_scores = scores[order].astype(np.float32)
    if bank_sources is not None and val_sources is not None:
        tm.bank_sources = np.asarray(bank_sources, dtype=str)
        tm.val_sources = np.asarray(val_sources, dtype=str)[order]
    return tm


def save(tm: TrustModel, model_dir: str | Path) -> Path:
    """Write ``trust.npz`` beside the model (atomically)."""
    path = Path(model_dir) / TRUST_FILE
    meta = {
        "format": FORMAT,
        "k": tm.k,
        "centre": tm.centre,
        "scale": tm.scale,
        "weights": tm.weights,
        "threshold": tm.threshold,
        "model_sha256": tm.model_sha256,
        "record": tm.record,
    }
    arrays = {
        "bank": tm.bank.astype(np.float16),
        "val_scores": tm.val_scores.astype(np.float32),
        "meta": np.array(json.dumps(meta)),
    }
    if tm.outlier_bank is not None:
        arrays["outlier_bank"] = tm.outlier_bank.astype(np.float16)
    if tm.projection is not None:
        arrays["projection"] = tm.projection.astype(np.float16)
    if tm.has_sources:
        arrays["bank_sources"] = np.asarray(tm.bank_sources, dtype=str)
        arrays["val_sources"] = np.asarray(tm.val_sources, dtype=str)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


@dataclass
class LabCells:
    """An adapted version's labeled cells (:data:`LAB_FILE`)."""

    features: np.ndarray  # (images, views, F) pooled features; view 0 is the clean image
    probs: np.ndarray  # (images, classes) of the clean view, through the adapted network
    labels: list[str]
    model_sha256: str = ""

    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """``(bank, validation)`` index arrays: within each class, every other image (in saved order) to the
        validation half, the rest to the bank, so an image is never scored against its own views."""
        bank, val = [], []
        for c in sorted(set(self.labels)):
            idx = [k for k, lbl in enumerate(self.labels) if lbl == c]
            bank += idx[0::2]
            val += idx[1::2]
        return np.array(sorted(bank), int), np.array(sorted(val), int)


def save_lab_cells(cells: LabCells, model_dir: str | Path) -> Path:
    path = Path(model_dir) / LAB_FILE
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        features=np.asarray(cells.features, np.float16),
        probs=np.asarray(cells.probs, np.float32),
        labels=np.array(list(cells.labels)),
        meta=np.array(json.dumps({"format": FORMAT, "model_sha256": cells.model_sha256})),
    )
    tmp.replace(path)
    return path


def load_lab_cells(model_dir: str | Path, model_sha256: str = "") -> LabCells | None:
    """The version's labeled cells, or ``None`` (no file, unreadable, or saved for another ``model.keras``)."""
    path = Path(model_dir) / LAB_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            cells = LabCells(z["features"].astype(np.float32), z["probs"].astype(np.float32),
                             [str(v) for v in z["labels"]], meta.get("model_sha256", ""))
    except Exception as exc:  # a damaged file: refit without the lab's cells
        log.warning("ignoring %s: unreadable (%s: %s)", path, type(exc).__name__, exc)
        return None
    if model_sha256 and cells.model_sha256 and cells.model_sha256 != model_sha256:
        log.warning("ignoring %s: saved for another model.keras", path)
        return None
    return cells


def load(model_dir: str | Path, model_sha256: str = "") -> TrustModel | None:
    """The model's trust statistics, or ``None`` (with the reason in the log) when there are none usable."""
    path = Path(model_dir) / TRUST_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            bank = z["bank"].astype(np.float32)
            val = z["val_scores"].astype(np.float32)
            ob = z["outlier_bank"].astype(np.float32) if "outlier_bank" in z.files else None
            proj = z["projection"].astype(np.float32) if "projection" in z.files else None
            bank_src = z["bank_sources"].astype(str) if "bank_sources" in z.files else None
            val_src = z["val_sources"].astype(str) if "val_sources" in z.files else None
    except Exception as exc:  # a damaged or foreign file: serve without the score
        log.warning("ignoring %s: unreadable (%s: %s); re-run fit-trust", path, type(exc).__name__, exc)
        return None
    if meta.get("format") != FORMAT:
        log.warning(
            "ignoring %s: format %s, this HematoVision reads %s; re-run fit-trust", path, meta.get("format"), FORMAT
        )
        return None
    if model_sha256 and meta.get("model_sha256") and meta["model_sha256"] != model_sha256:
        log.warning(
            "ignoring %s: fitted for another model.keras; re-run: python -m hematovision fit-trust --model %s",
            path,
            model_dir,
        )
        return None
    return TrustModel(
        bank,
        int(meta["k"]),
        meta["centre"],
        meta["scale"],
        meta["weights"],
        float(meta["threshold"]),
        val,
        ob,
        meta.get("model_sha256", ""),
        meta.get("record", {}),
        proj,
        bank_src,
        val_src,
    )
