"""Fit the unfamiliar-cell score for a model directory: ``python -m hematovision fit-trust --model DIR``.

Images come from the model's own split manifest (``split_manifest.csv``), so the statistics are those
of the data the model was trained and validated on:

* the **bank**: at most :data:`BANK_SIZE` training images, drawn at random within each (source,
  class), in proportion to their counts;
* the **threshold**: on every validation image (see :func:`unfamiliar.choose_threshold`);
* the **outlier bank**: BCCD red-cell and platelet crops, background squares of the even-numbered
  BCCD fields (:mod:`outliers`), plus heavily blurred and cut copies of training images.

What it measures (on odd-numbered BCCD fields and the test sets, none of it used in fitting) is
written into ``trust.npz``'s record and the model card (``trust``).

An **adapted version** (``python -m hematovision adapt``) carries its parent's split manifest and its
labeled cells' pooled features (:data:`~hematovision.modeling.unfamiliar.LAB_FILE`): the same fit adds half
of those cells (every view) to the bank and the other half (clean view) to validation.
:func:`refit_version` is the quick fit that follows an adaptation (:data:`REFIT_BANK` training and
:data:`REFIT_VALIDATION` validation images, no measurement; the parent's activations below the adapted blocks
read from :mod:`.refit_cache`); ``fit-trust`` on the version's folder is the full one.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import data_root
from ..data import datasets as ds
from ..evaluation import shifts
from ..imaging.decode import read_rgb
from ..modeling import persistence, unfamiliar
from ..modeling.persistence import ModelError
from ..modeling.unfamiliar import DEFAULT_K, TrustModel
from ..serving import litert
from ..serving.classifier import Classifier
from ..stats.domain_shift import ALPHA, MIN_BATCH, MIN_RANK, MIN_RANK_BY_SOURCE, MIN_SHARE, domain_shift
from . import outliers, refit_cache

log = logging.getLogger("hematovision.trust")

#: Largest training bank (images); features are stored as float16 (1280 x 2 bytes each).
BANK_SIZE = 4000
#: Real test images per test set the re-exported flat-buffer is checked on (as ``export-litert``'s default).
CHECK_IMAGES_PER_SET = 16
#: Stain-shift families (shifts.SUITE) measured as proxies for another laboratory's batch.
SHIFT_FAMILIES = ("restain_rapid", "cast_cyan", "lab_rapid_tight", "lab_cyan_field", "greyscale", "hue_90")
#: The quick refit after an adaptation (:func:`refit_version`): training images in the bank and validation images
#: for the threshold, each drawn within (source, class) in proportion. Measured in docs/trust.md.
REFIT_BANK = 1500
REFIT_VALIDATION = 1000
#: The source name of an adapted version's own labeled cells in its bank and validation (the batch rule's
#: source-matched reference: a lab batch is ranked against the lab's own held-out cells).
LAB_SOURCE = "lab"
#: BCCD red-cell and platelet crops per even field in the outlier bank, and the seed of every draw of the fit.
OUTLIERS_PER_FIELD = 2
SEED = 0


def _stratified(images: list[ds.LabeledImage], n: int, seed: int) -> list[ds.LabeledImage]:
    """At most ``n`` images, drawn within each (source, class) in proportion to its size; manifest order kept."""
    if len(images) <= n:
        return list(images)
    rng = np.random.default_rng(seed)
    by: dict[tuple[str, str], list[int]] = {}
    for k, im in enumerate(images):
        by.setdefault((im.source, im.label), []).append(k)
    keep: list[int] = []
    for key in sorted(by):
        idx = by[key]
        take = max(1, round(n * len(idx) / len(images)))
        keep += [idx[j] for j in rng.choice(len(idx), min(take, len(idx)), replace=False)]
    return [images[k] for k in sorted(keep)[:n]] if len(keep) > n else [images[k] for k in sorted(keep)]


def bank_images(manifest: list[ds.LabeledImage], n: int = BANK_SIZE, seed: int = 0) -> list[ds.LabeledImage]:
    return _stratified(ds.select(manifest, split="train"), n, seed)


def validation_images(
    manifest: list[ds.LabeledImage], n: int | None = None, seed: int = 0
) -> list[ds.LabeledImage]:
    """Every validation image, or at most ``n`` of them drawn as :func:`bank_images` draws."""
    val = ds.select(manifest, split="val")
    return val if n is None else _stratified(val, n, seed)


# ---------------------------------------------------------------------- features


def features_of(
    clf, images: Iterable, chunk: int = 64, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, features)`` of RGB images (an iterable of arrays, consumed ``chunk`` at a time so memory stays
    bounded)."""
    probs, feats, buf, done = [], [], [], 0

    def flush():
        nonlocal done
        if buf:
            p, f = clf.proba_and_features(buf)
            if f is None:
                raise ModelError(
                    "the classifier returns no features: re-run export-litert, or load it with backend='keras'"
                )
            probs.append(p)
            feats.append(f)
            done += len(buf)
            buf.clear()
            if progress:
                progress(done)

    for rgb in images:
        buf.append(rgb)
        if len(buf) >= chunk:
            flush()
    flush()
    if not probs:
        return np.zeros((0, len(clf.classes_))), np.zeros((0, 0), np.float32)
    return np.concatenate(probs), np.concatenate(feats)


def read_all(
    items: Sequence[ds.LabeledImage], transform: Callable[[np.ndarray, int], np.ndarray] | None = None
) -> Iterator[np.ndarray]:
    """Decoded images in order, read two at a time in threads (a bad file is skipped with a log line)."""

    def one(k_item):
        k, item = k_item
        try:
            rgb = read_rgb(item.path)
        except Exception as exc:  # a vanished or damaged file must not stop the fit
            log.warning("skipping %s (%s)", item.path, exc)
            return None
        return transform(rgb, k) if transform else rgb

    with ThreadPoolExecutor(2) as pool:
        for rgb in pool.map(one, enumerate(items)):
            if rgb is not None:
                yield rgb


def _pick(items: Sequence, n: int, seed: int) -> list:
    if len(items) <= n:
        return list(items)
    rng = np.random.default_rng(seed)
    return [items[i] for i in sorted(rng.choice(len(items), n, replace=False))]


# ---------------------------------------------------------------------- measurement


def auroc(inlier_scores: np.ndarray, outlier_scores: np.ndarray) -> float:
    """Probability that an outlier scores above an in-domain image (ties count half)."""
    a, b = np.asarray(inlier_scores, np.float64), np.asarray(outlier_scores, np.float64)
    if not len(a) or not len(b):
        return float("nan")
    ranks = stats_rankdata(np.concatenate([a, b]))
    return float((ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


def stats_rankdata(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata  # scipy.stats takes ~0.3 s to import: only when measuring

    return rankdata(x)


def batch_alarm_rate(
    flags: np.ndarray,
    expected: float,
    size: int,
    draws: int = 500,
    seed: int = 0,
    scores: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    tm: TrustModel | None = None,
    feats: np.ndarray | None = None,
) -> float:
    """Share of random batches of ``size`` drawn (without replacement) from ``flags`` that the batch rule calls
    shifted (with ``scores`` and the validation ``reference`` scores: either rule, as served; with the trust model
    ``tm`` and the images' ``feats``, source-matched when it records sources)."""
    flags = np.asarray(flags, bool)
    if len(flags) < size:
        return float("nan")
    rng = np.random.default_rng(seed)
    near = None if tm is None or feats is None else tm.nearest_source(feats)
    if near is not None:
        reference = tm.val_scores  # the order val_sources follows
    hits = []
    for _ in range(draws):
        b = rng.choice(len(flags), size, replace=False)
        hits.append(
            domain_shift(
                flags[b],
                expected,
                scores=None if scores is None else scores[b],
                reference=reference,
                sources=None if near is None else near[b],
                reference_sources=None if near is None else tm.val_sources,
            ).detected
        )
    return float(np.mean(hits))


def measure(
    tm: TrustModel,
    val_scores: np.ndarray,
    groups: dict[str, tuple[np.ndarray, np.ndarray]],
    in_domain: Sequence[str] = (),
) -> dict:
    """Per group of images (name -> (probs, features)): share unfamiliar, AUROC against validation (= the whole
    group's mean rank, the batch rule's second statistic), and for batches of 50 and 200 drawn from the group,
    the share the batch rule calls shifted (both rules, as served; the false alarm rate for ``in_domain``
    groups, the detection rate for the others)."""
    out = {}
    expected = tm.expected_share
    for name, (probs, feats) in groups.items():
        if not len(probs):
            continue
        s = tm.score(feats, probs)
        flags = tm.unfamiliar(s)
        out[name] = {
            "n": int(len(s)),
            "unfamiliar_share": float(flags.mean()),
            "flagged_share": float(np.mean(flags | (probs.max(axis=1) < tm.record.get("review_threshold", 0.0)))),
            "auroc_vs_validation": None if name in in_domain else auroc(val_scores, s),
            "in_domain": name in in_domain,
            "batch_detected_share": {
                str(n): batch_alarm_rate(flags, expected, n, scores=s, reference=val_scores, tm=tm, feats=feats)
                for n in (50, 200)
                if len(flags) >= n
            },
        }
    return out


# ---------------------------------------------------------------------- the command


@dataclass
class FitReport:
    path: Path
    record: dict
    exported: str = ""  # what happened to model.tflite


class TrainingDataMissing(ModelError):
    """The model's training and validation images cannot be read: no split manifest, or its images are not under
    the data root. ``reason`` says which, in a few words."""

    def __init__(self, message: str, reason: str, fixable: bool = True):
        super().__init__(message)
        self.reason = reason
        self.fixable = fixable  # with the data root in place (a manifest is there)


def _ensure_features_export(model_dir: Path, data: str | Path | None) -> str:
    """Re-export ``model.tflite`` when the served one has no features output (exports before issue 19)."""
    card = persistence.load_card(model_dir)
    ok, _ = litert.usable(model_dir, card)
    if not (model_dir / persistence.LITERT_FILE).is_file():
        return "no model.tflite: the Keras model computes the features"
    if ok and litert.LiteRTRuntime(model_dir / persistence.LITERT_FILE).has_features:
        return ""
    images, desc = litert.check_images(data, per_set=CHECK_IMAGES_PER_SET, model_dir=model_dir)
    rec = litert.export_litert(model_dir, images, desc)
    return f"re-exported model.tflite with a features output (max abs difference from Keras {rec['max_abs_diff']:.1e})"


def fitted_classes(card: persistence.ModelCard) -> list[str]:
    """The classes the model was fitted on: its outputs less those its training left out
    (``train --exclude-classes``, leave-one-class-out), so the score's bank and validation never hold them."""
    excluded = set(card.training.get("hyperparameters", {}).get("exclude_classes") or ())
    return [c for c in card.classes if c not in excluded]


def read_split(model_dir: Path, root: Path, classes: Sequence[str]) -> list[ds.LabeledImage]:
    """The model's split manifest, read against ``root``; :class:`TrainingDataMissing` when there is none or its
    images are not there."""
    manifest_path = model_dir / persistence.MANIFEST_FILE
    if not manifest_path.is_file():
        raise TrainingDataMissing(
            f"no {persistence.MANIFEST_FILE} in {model_dir}: the unfamiliar score is fitted on the model's own "
            "training and validation split",
            f"{model_dir} has no {persistence.MANIFEST_FILE}, so the model's training images are unknown",
            fixable=False,
        )
    manifest = [m for m in ds.read_manifest(manifest_path, root) if m.label in classes]
    missing = sum(1 for m in manifest[:50] if not m.path.is_file())
    if missing == min(50, len(manifest)):
        raise TrainingDataMissing(
            f"the images listed in {manifest_path} are not under the data root {root} "
            "(set --data or $HEMATOVISION_DATA)",
            f"training images not found under {root}",
        )
    return manifest


def _fit_images(
    model_dir: Path,
    manifest: list[ds.LabeledImage],
    root: Path,
    bank_size: int,
    validation_size: int | None,
    outliers_per_field: int,
    seed: int,
) -> tuple[list[ds.LabeledImage], list[ds.LabeledImage], list[ds.LabeledImage], Callable[[], list]]:
    """The fit's images, drawn with fixed seeds: ``(bank, validation, rest, crops)``; ``rest`` are other training
    images (blurred and cut copies) and ``crops()`` the BCCD red-cell, platelet and background crops."""
    bank = bank_images(manifest, bank_size, seed)
    val = validation_images(manifest, validation_size, seed + 6)
    if not bank or not val:
        raise ModelError(f"{model_dir / persistence.MANIFEST_FILE} lists no training or no validation images")
    # what is not a white cell, from the even BCCD fields and other training images than the bank's
    in_bank = {m.relpath for m in bank}
    rest = _pick([m for m in ds.select(manifest, split="train") if m.relpath not in in_bank] or bank, 300, seed + 1)

    def crops() -> list:
        cs = outliers.bccd_crops(root, kinds=("RBC", "Platelets"), per_image=outliers_per_field, half="fit", seed=seed)
        return [c.rgb for c in cs + outliers.background_crops(root, half="fit", seed=seed)]

    return bank, val, rest, crops


def warm_refit_cache(model_dir: str | Path, data: str | Path | None = None, cache: Path | None = None) -> bool:
    """Compute the refit cache (:mod:`.refit_cache`) for adaptations of this model ahead of time, e.g. while a person
    reviews the cells an adaptation will learn from, so the first adaptation's refit runs only the network's top.
    Adapted versions share the parent's bottom, manifest and seeds, so they find it under the same key. True when
    the cache holds it; never raises (a failure costs the first adaptation its time, nothing else)."""
    try:
        model_dir = Path(model_dir)
        root = data_root(data)
        card = persistence.load_card(model_dir)
        manifest = read_split(model_dir, root, fitted_classes(card))
        images = _fit_images(model_dir, manifest, root, REFIT_BANK, REFIT_VALIDATION, OUTLIERS_PER_FIELD, SEED)
        got, _ = _cached_features(model_dir, card, images, root, OUTLIERS_PER_FIELD, SEED,
                                  Path(cache) if cache is not None else refit_cache.cache_dir())
        return got.cache in ("read", "written")
    except Exception as exc:  # a lab installation without the training images, a full disk, ...
        log.info("refit cache not warmed for %s (%s: %s)", model_dir, type(exc).__name__, exc)
        return False


def _cached_features(
    model_dir: Path,
    card: persistence.ModelCard,
    images: tuple,
    root: Path,
    outliers_per_field: int,
    seed: int,
    cache: Path,
    progress: Callable[[str, int, int], None] | None = None,
    network=None,
) -> tuple[refit_cache.RefitFeatures, object]:
    """The fit's images (:func:`_fit_images`'s ``(bank, validation, rest, crops)``) through the Keras ``network``
    (the model's own, loaded when not given) on the bottom's activations in ``cache`` (computed there first when
    absent, through the served flat-buffer where it is usable); returns the features and the network."""
    groups = _refit_groups(*images, root, outliers_per_field, seed)
    if network is None:
        network = persistence.load_keras_model(model_dir, card)
    served_ok = litert.usable(model_dir, card)[0]
    got = refit_cache.features(network, card.input_size, card.framing, groups, cache, progress,
                               litert_path=model_dir / persistence.LITERT_FILE if served_ok else None)
    return got, network


def _features_from(cached: refit_cache.RefitFeatures | None, network) -> str:
    """Where the fit's features came from, for the record."""
    if cached is None:
        return "the served model"
    cut = refit_cache.cut_name(network)
    if cached.cache == "read":
        return f"the Keras network's top on the parent's activations at {cut}, read from the refit cache"
    via = ("the served model; its activations at " if cached.computed_by == "LiteRT"
           else "the Keras network; its bottom's activations at ")
    return f"{via}{cut} {cached.cache} (refit cache)"


def fit_model_dir(
    model_dir: str | Path,
    data: str | Path | None = None,
    *,
    bank_size: int = BANK_SIZE,
    validation_size: int | None = None,
    k: int = DEFAULT_K,
    measure: bool = True,
    measure_size: int = 600,
    outliers_per_field: int = OUTLIERS_PER_FIELD,
    seed: int = SEED,
    export: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    command: str = "",
    cache: Path | None = None,
    network=None,
) -> FitReport:
    """Fit ``trust.npz`` for the model in ``model_dir`` from its split manifest's images (at most ``bank_size``
    training images in the bank; every validation image, or ``validation_size`` of them, for the threshold) and,
    for an adapted version, its labeled cells; measure it (unless ``measure`` is false); record it.

    ``cache``: a folder for the activations below the adapted blocks (:mod:`.refit_cache`; the refit after an
    adaptation): the features then come from the Keras ``network`` (the model's own, loaded when not given) with
    its bottom's activations read from there or computed and written there, instead of the served model."""
    model_dir = Path(model_dir)
    root = data_root(data)
    card = persistence.load_card(model_dir)
    classes = fitted_classes(card)
    manifest = read_split(model_dir, root, classes)
    t0 = time.time()
    exported = _ensure_features_export(model_dir, data) if export else ""
    served: list[Classifier] = []

    def run(name: str, items, transform=None, n: int | None = None):
        if not served:
            served.append(Classifier.load(model_dir))
            served[0].trust = None  # an old trust.npz must not matter while fitting a new one
        cb = (lambda d: progress(name, d, n)) if progress and n else None
        return features_of(served[0], read_all(items, transform) if transform is not False else items, progress=cb)

    bank, val, rest, crops = _fit_images(model_dir, manifest, root, bank_size, validation_size, outliers_per_field,
                                         seed)
    n_val_listed = len(validation_images(manifest))
    cached = None
    if cache is not None:
        try:
            cached, network = _cached_features(model_dir, card, (bank, val, rest, crops), root, outliers_per_field,
                                               seed, cache, progress, network)
        except Exception as exc:  # the served model's path below still gives the features
            log.warning("refit cache not usable (%s: %s); through the served model", type(exc).__name__, exc)
    if cached is not None:
        got = cached.groups
        (_, bank_f), (val_p, val_f) = got["training bank"], got["validation"]
        crop_f, blur_f, cut_f = (got[name][1] for name in ("outlier crops", "blurred", "cut"))
    else:
        _, bank_f = run("training bank", bank, n=len(bank))
        val_p, val_f = run("validation", val, n=len(val))
        crop_list = crops()
        _, crop_f = run("outlier crops", crop_list, transform=False, n=len(crop_list))
        _, blur_f = run("blurred", rest[:150], lambda x, i: outliers.heavy_blur(x), n=min(150, len(rest)))
        _, cut_f = run("cut", rest[150:], lambda x, i: outliers.cut_cell(x, i), n=max(0, len(rest) - 150))
    n_train_f, n_val_f = len(bank_f), len(val_f)
    # an adapted version's own labeled cells are in-domain for it: half of them (every view) in the bank, the
    # other half (clean view) among the validation images the threshold is chosen on
    lab = unfamiliar.load_lab_cells(model_dir, card.model_sha256)
    lab_bank = lab_val = np.zeros(0, int)
    if lab is not None and len(lab.labels):
        lab_bank, lab_val = lab.halves()
        bank_f = np.concatenate([bank_f, lab.features[lab_bank].reshape(-1, lab.features.shape[-1])])
        val_f = np.concatenate([val_f, lab.features[lab_val, 0]])
        val_p = np.concatenate([val_p, lab.probs[lab_val]])
    outlier_f = np.concatenate([f for f in (crop_f, blur_f, cut_f) if f.size])
    tm = unfamiliar.fit(
        bank_f,
        val_f,
        val_p,
        k=k,
        outlier_features=outlier_f if len(outlier_f) else None,
        model_sha256=card.model_sha256,
        # each image's source, for the batch rule's source-matched reference (unless a file was skipped); an
        # adapted version's own cells are the source "lab"
        bank_sources=[m.source for m in bank] + [LAB_SOURCE] * (len(bank_f) - n_train_f)
        if len(bank) == n_train_f else None,
        val_sources=[m.source for m in val] + [LAB_SOURCE] * (len(val_f) - n_val_f) if len(val) == n_val_f else None,
    )
    val_scores = tm.score(val_f, val_p)
    fit_seconds = time.time() - t0

    measured: dict = {}
    if measure:
        tm.record = {"review_threshold": card.default_threshold}
        measured = _measure(tm, val_scores, run, manifest, root, measure_size, seed)
    validation_from = f"{n_val_f:,} of the {n_val_listed:,} validation images of {persistence.MANIFEST_FILE}"
    lab_record: dict = {}
    if len(lab_val):
        validation_from += (
            f" + {len(lab_val)} of the {len(lab.labels)} labeled lab cells ({len(lab_val) / len(val_f):.1%} of the "
            "validation images)"
        )
        lab_record = {
            "labeled": len(lab.labels),
            "in_bank": int(len(lab_bank)),
            "bank_views": int(len(bank_f) - n_train_f),
            "in_validation": int(len(lab_val)),
            "validation_share": len(lab_val) / len(val_f),
            "unfamiliar_share": float(tm.unfamiliar(val_scores[n_val_f:]).mean()),
        }
    tm.record = {
        "fitted": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command or f"python -m hematovision fit-trust --model {_shown(model_dir)}",
        "bank_images": int(n_train_f),
        "k": tm.k,
        "pca_dims": None if tm.projection is None else int(tm.projection.shape[1]),
        "weights": tm.weights,
        "outlier_bank": {
            "bccd_crops_even_fields": int(len(crop_f)),
            "blurred": int(len(blur_f)),
            "cut": int(len(cut_f)),
        },
        "validation_images": int(len(val_f)),
        "validation_from": validation_from,
        **({"excluded_classes": [c for c in card.classes if c not in classes]} if len(classes) < len(card.classes)
           else {}),
        **({"lab_cells": lab_record} if lab_record else {}),
        "threshold": tm.threshold,
        "validation_unfamiliar_share": tm.expected_share,
        "max_unfamiliar_share": unfamiliar.MAX_UNFAMILIAR_SHARE,
        "batch_rule": {
            "min_batch": MIN_BATCH,
            "alpha": ALPHA,
            "min_share": MIN_SHARE,
            "min_rank": MIN_RANK,
            "min_rank_by_source": dict(MIN_RANK_BY_SOURCE),
            "source_matched": tm.has_sources,
        },
        "review_threshold": card.default_threshold,
        "measured": measured,
        "measured_on": (
            "test sets (sampled), odd-numbered BCCD fields, blurred/cut and stain-shifted test images; "
            "none used in fitting"
            if measure
            else "not measured (run fit-trust on this model for the measurement)"
        ),
        "seconds": round(time.time() - t0, 1),
        "fit_seconds": round(fit_seconds, 1),
        "features_from": _features_from(cached, network),
    }
    path = unfamiliar.save(tm, model_dir)
    record_in_model(model_dir, tm.record)
    return FitReport(path, tm.record, exported)


def _measure(tm: TrustModel, val_scores: np.ndarray, run, manifest, root: Path, measure_size: int, seed: int) -> dict:
    """Measured on what fitting never saw: the test sets, odd BCCD fields, blurred/cut test images, stain shifts."""
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tests = {key: _pick(ds.test_set(manifest, key), measure_size, seed + 2) for key in ("kaggle_test", "pbc_test")}
    for key, items in tests.items():
        groups[key] = run(ds.TEST_SETS[key], items, n=len(items))
    for kind in ("RBC", "Platelets", "WBC"):
        cs = outliers.bccd_crops(root, kinds=(kind,), per_image=1, half="measure", seed=seed + 3)
        groups[f"bccd_{kind.lower()}"] = run(f"BCCD {kind}", [c.rgb for c in cs], transform=False, n=len(cs))
    bg = outliers.background_crops(root, half="measure", seed=seed + 3)
    groups["background"] = run("background", [c.rgb for c in bg], transform=False, n=len(bg))
    mixed = _pick(tests["pbc_test"], 100, seed + 4) + _pick(tests["kaggle_test"], 100, seed + 4)
    groups["blurred"] = run("blurred", mixed, lambda x, i: outliers.heavy_blur(x), n=len(mixed))
    groups["cut"] = run("cut", mixed, lambda x, i: outliers.cut_cell(x, i), n=len(mixed))
    fam = {f.name: f for f in shifts.SUITE}
    for name in SHIFT_FAMILIES:
        f = fam[name]
        src = _pick(tests["pbc_test"], 200, seed + 5) if f.geometry else mixed
        groups[f"shift_{name}"] = run(f"shift {name}", src, lambda x, i, f=f: f.apply(x, i), n=len(src))
    return measure(tm, val_scores, groups, in_domain=("kaggle_test", "pbc_test", "bccd_wbc"))


def _refit_groups(
    bank: Sequence[ds.LabeledImage],
    val: Sequence[ds.LabeledImage],
    rest: Sequence[ds.LabeledImage],
    crops: Callable[[], list[np.ndarray]],
    root: Path,
    per_field: int,
    seed: int,
) -> list[refit_cache.Group]:
    """The fit's images as :class:`refit_cache.Group`s, in the order and with the transforms of the served path."""

    def ident(items, transform: str) -> tuple[str, ...]:
        return (transform, *(f"{m.relpath} {m.sha256}" for m in items))

    def read(item, k):
        return read_rgb(item.path)

    base = Path(root) / outliers.BCCD_DIR
    fields = tuple(
        f"{p.relative_to(base).as_posix()} {p.stat().st_size}"
        for p in sorted([*base.glob("Annotations/*.xml"), *base.glob("JPEGImages/*.jpg")])
    )
    return [
        refit_cache.Group("training bank", ident(bank, "plain"), lambda: bank, read),
        refit_cache.Group("validation", ident(val, "plain"), lambda: val, read),
        refit_cache.Group(
            "outlier crops",
            (f"bccd RBC+Platelets per_field={per_field} even fields + background seed={seed} scale="
             f"{outliers.CROP_SCALE}", *fields),
            crops,
            lambda rgb, k: rgb,
        ),
        refit_cache.Group("blurred", ident(rest[:150], "heavy_blur"), lambda: rest[:150],
                          lambda m, k: outliers.heavy_blur(read_rgb(m.path))),
        refit_cache.Group("cut", ident(rest[150:], "cut_cell"), lambda: rest[150:],
                          lambda m, k: outliers.cut_cell(read_rgb(m.path), k)),
    ]


@dataclass
class TrustRefit:
    """What the refit after an adaptation did (:func:`refit_version`): ``message`` says it, or why it was not."""

    fitted: bool
    message: str
    seconds: float
    record: dict = field(default_factory=dict)


def refit_version(
    model_dir: str | Path,
    data: str | Path | None = None,
    *,
    bank_size: int = REFIT_BANK,
    validation_size: int = REFIT_VALIDATION,
    progress: Callable[[str, int, int], None] | None = None,
    network=None,
    cache: Path | None = None,
) -> TrustRefit:
    """The unfamiliar-cell score refitted for a freshly adapted version, through its own network (the quick fit:
    :data:`REFIT_BANK` + :data:`REFIT_VALIDATION` images and the outlier bank, no measurement). Never raises for
    what a lab installation lacks (the training images): the version is then served without the check, and the
    message says why and what to run.

    The images' activations below the adapted blocks come from the refit cache (``cache``, default
    :func:`refit_cache.cache_dir`; computed and written there on the first refit for a parent); ``network``: the
    version's Keras model when the caller has it in memory (else loaded from ``model_dir``)."""
    t0 = time.time()
    model_dir = Path(model_dir)
    full = f"python -m hematovision fit-trust --model {_shown(model_dir)} --data {data_root(data)}"
    try:
        rep = fit_model_dir(
            model_dir,
            data,
            bank_size=bank_size,
            validation_size=validation_size,
            measure=False,
            progress=progress,
            cache=Path(cache) if cache is not None else refit_cache.cache_dir(),
            network=network,
            command=f"refit after adaptation (bank {bank_size}, validation {validation_size}); the full fit: {full}",
        )
    except TrainingDataMissing as exc:
        todo = f"; run `{full}`" if exc.fixable else "; it is served without the unfamiliar-cell check"
        return TrustRefit(False, f"unfamiliar-cell check not refitted: {exc.reason}{todo}", time.time() - t0)
    except Exception as exc:  # the adapted version is saved already: a failed refit must not lose it
        log.warning("unfamiliar-cell refit of %s failed", model_dir, exc_info=True)
        return TrustRefit(
            False,
            f"unfamiliar-cell check not refitted ({type(exc).__name__}: {exc}); run `{full}`",
            time.time() - t0,
        )
    r = rep.record
    seconds = time.time() - t0
    lab = r.get("lab_cells", {})
    lab_part = (
        f"; {lab['unfamiliar_share']:.1%} of the {lab['in_validation']} lab cells held out of the bank unfamiliar"
        if lab
        else ""
    )
    return TrustRefit(
        True,
        f"unfamiliar-cell check refitted for this version in {seconds:.0f} s: bank {r['bank_images']} training "
        f"images" + (f" + {lab['in_bank']} lab cells" if lab else "") + f"; threshold {r['threshold']:.3f} calls "
        f"{r['validation_unfamiliar_share']:.1%} of {r['validation_images']} validation images unfamiliar"
        f"{lab_part}",
        seconds,
        r,
    )


def _shown(path: Path) -> str:
    """A path as the record shows it: relative to the working directory when under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def record_in_model(model_dir: Path, record: dict, key: str = "trust") -> None:
    """Write the fit's record into ``evaluation.json`` (when there is one) and the model card (``training.trust``)."""
    ev = Path(model_dir) / persistence.EVALUATION_FILE
    if ev.exists():
        data = json.loads(ev.read_text())
        data[key] = record
        ev.write_text(json.dumps(data, indent=1) + "\n")
    persistence.update_card(
        model_dir, lambda c: c.training.__setitem__(key, {k: v for k, v in record.items() if k != "measured"})
    )


def summary_lines(record: dict) -> list[str]:
    """The fit's figures in a few lines for the terminal."""
    lines = [
        f"bank {record['bank_images']} training images, k {record['k']}; threshold {record['threshold']:.3f}: "
        f"{record['validation_unfamiliar_share']:.1%} of {record['validation_images']} validation images unfamiliar"
    ]
    for name, m in record.get("measured", {}).items():
        au = m.get("auroc_vs_validation")
        batches = ", ".join(f"batches of {n}: {v:.0%}" for n, v in m.get("batch_detected_share", {}).items())
        lines.append(
            f"  {name:24s} n {m['n']:4d}  unfamiliar {m['unfamiliar_share']:6.1%}  flagged {m['flagged_share']:6.1%}"
            + (f"  AUROC {au:.3f}" if au is not None else "")
            + (f"  shift called on {batches}" if batches else "")
        )
    return lines
