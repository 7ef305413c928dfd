"""Evaluate a model on labeled images and write ``evaluation.json`` and per-image predictions.

Evaluation goes through :meth:`Classifier.classify`, the same path the CLI and
the dashboard use, so the figures describe the product as shipped.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..config import data_root
from ..data import datasets as ds
from ..data.labeled import LabeledInputs
from ..imaging.sources import ImageInput
from ..modeling import persistence
from ..serving.classifier import Classifier
from ..stats import calibration as cal
from ..stats import metrics as m


def evaluate_predictions(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    temperature: float,
    groups: list[str] | None = None,
    name: str = "",
) -> dict:
    """Every figure of one evaluated set, JSON-ready."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    n_cls = len(classes)
    y_pred = probs.argmax(axis=1)
    cm = m.confusion_matrix(y_true, y_pred, n_cls)
    pc = m.per_class(cm)
    correct = int((y_pred == y_true).sum())
    raw = cal.uncalibrate(probs, temperature)
    conf, right = probs.max(axis=1), y_pred == y_true
    cells = list(groups) if groups is not None else [str(i) for i in range(len(y_true))]  # the unit that is resampled
    ece_before, bins_before = cal.reliability(raw, y_true)
    ece_after, bins_after = cal.reliability(probs, y_true)
    roc = {}
    for k, c in enumerate(classes):
        fpr, tpr, auc = m.roc_curve_ovr(y_true, probs, k)
        fx, ty = m.thin_curve(fpr, tpr)
        roc[c] = {"auc": None if np.isnan(auc) else auc, "fpr": fx, "tpr": ty}
    out = {
        "name": name,
        "n_images": int(len(y_true)),
        "accuracy": correct / len(y_true) if len(y_true) else None,
        "accuracy_ci95": list(m.wilson_interval(correct, len(y_true))),
        "macro_f1": m.macro_f1(cm),
        "per_class": {
            c: {
                "precision": float(pc["precision"][k]),
                "recall": float(pc["recall"][k]),
                "f1": float(pc["f1"][k]),
                "support": int(pc["support"][k]),
            }
            for k, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "ece_before_calibration": ece_before,
        "ece_after_calibration": ece_after,
        "ece_after_calibration_ci95": list(m.cluster_bootstrap(lambda i: cal.ece_of(conf[i], right[i]), cells)),
        "ece_floor": cal.ece_floor(probs, cells).__dict__,
        "reliability_before": [b.__dict__ for b in bins_before],
        "reliability_after": [b.__dict__ for b in bins_after],
        "risk_coverage": cal.risk_coverage(probs, y_true),
        "roc": roc,
    }
    if groups is not None:
        gt, gp, keys = m.group_vote(y_true, probs, groups)
        ok = int((gt == gp).sum())
        out["per_cell"] = {
            "n_cells": len(keys),
            "correct": ok,
            "accuracy": ok / len(keys) if keys else None,
            "accuracy_ci95": list(m.wilson_interval(ok, len(keys))),
            "image_accuracy_ci95_by_cell": list(m.cluster_bootstrap(lambda i: float(right[i].mean()), cells)),
            "rule": "one vote per original cell: the class with the highest mean probability over its augmented copies",
            "confusion_matrix": m.confusion_matrix(gt, gp, n_cls).tolist(),
        }
    return _clean(out)


def _clean(obj):
    """NaN -> None so the JSON is standard."""
    if isinstance(obj, float):
        return None if np.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def evaluate_labeled(
    classifier, labeled: LabeledInputs, name: str, progress: Callable[[int], None] | None = None, per_cell: bool = False
) -> tuple[dict, pd.DataFrame]:
    """Classify labeled inputs and compute every figure; unreadable images are listed, not fatal."""
    classes = classifier.classes_
    preds = list(classifier.classify(labeled.inputs, progress=progress))
    rows, keep = [], []
    skipped = list(labeled.skipped)
    for k, (p, label, group) in enumerate(zip(preds, labeled.labels, labeled.groups)):
        if not p.ok:
            skipped.append((p.file, p.error))
            continue
        keep.append(k)
        rows.append(
            {
                "file": p.file,
                "group": group,
                "true_class": label,
                "predicted_class": p.predicted_class,
                "confidence": p.confidence,
                **{f"p_{c}": v for c, v in zip(classes, p.probabilities)},
            }
        )
    frame = pd.DataFrame(
        rows, columns=["file", "group", "true_class", "predicted_class", "confidence"] + [f"p_{c}" for c in classes]
    )
    if not rows:
        return {"name": name, "n_images": 0, "skipped": [list(s) for s in skipped]}, frame
    y = np.array([classes.index(r) for r in frame["true_class"]])
    probs = frame[[f"p_{c}" for c in classes]].to_numpy()
    report = evaluate_predictions(
        y, probs, classes, classifier.card.temperature, list(frame["group"]) if per_cell else None, name
    )
    report["skipped"] = [list(s) for s in skipped]
    return report, frame


def kept_records(old: dict, report: dict) -> dict:
    """What a re-evaluation keeps of the previous ``evaluation.json``: every record it does not write itself
    (leave-one-source-out, the stain-shift suite, smear fields, the unfamiliar-cell fit ...), unless the record
    names another model version than the one just evaluated (a record of this model's predictions would then
    describe another network)."""
    version = report["model_version"]
    return {
        k: v for k, v in old.items()
        if k not in report and not (isinstance(v, dict) and v.get("model_version") not in (None, version)
                                    and not k.endswith("_previous_model"))
    }


def evaluate_model_on_test_sets(model_dir: Path, root: Path | None = None, progress_factory=None) -> dict:
    """Evaluate on Kaggle TEST, Kaggle TEST_SIMPLE and PBC test; write the results beside the model."""
    root = data_root(root)
    model_dir = Path(model_dir)
    clf = Classifier.load(model_dir, batch_size=64)
    manifest = model_dir / persistence.MANIFEST_FILE
    images = ds.read_manifest(manifest, root) if manifest.exists() else ds.discover(root)
    report = {
        "model_version": clf.version,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "classes": clf.classes_,
        "temperature": clf.card.temperature,
        "default_threshold": clf.default_threshold,
        "split": "see split_manifest.csv and model_card.json (training.split_rules); these images were never trained "
                 "or tuned on",
        "sets": {},
    }
    frames = []
    for key, title in ds.TEST_SETS.items():
        subset = ds.test_set(images, key)
        if not subset:
            continue
        labeled = LabeledInputs(
            [ImageInput(i.relpath, (lambda p=i.path: p.read_bytes())) for i in subset],
            [i.label for i in subset],
            [i.group for i in subset],
        )
        with tqdm(total=len(subset), desc=title, mininterval=2) as bar:
            rep, frame = evaluate_labeled(
                clf, labeled, title, progress=lambda n: bar.update(n - bar.n), per_cell=key.startswith("kaggle_test")
            )
        rep["source"] = subset[0].source
        report["sets"][key] = rep
        frame.insert(0, "set", key)
        frames.append(frame)
    previous = model_dir / persistence.EVALUATION_FILE
    if previous.exists():
        try:
            old = json.loads(previous.read_text())
        except ValueError:
            old = {}
        report.update(kept_records(old, report))
    previous.write_text(json.dumps(report, indent=1) + "\n")
    if frames:
        pd.concat(frames).to_csv(model_dir / persistence.PREDICTIONS_FILE, index=False, float_format="%.6f")
    return report


def summary_lines(report: dict) -> list[str]:
    """Headline figures, one line per set, for the CLI and the README."""
    out = []
    for s in report.get("sets", {}).values():
        if not s.get("n_images"):
            continue
        lo, hi = s["accuracy_ci95"]
        line = (
            f"{s['name']}: {s['n_images']} images, accuracy {s['accuracy']:.2%} (95% CI {lo:.1%}-{hi:.1%}), "
            f"macro-F1 {s['macro_f1']:.3f}, ECE {s['ece_before_calibration']:.3f} -> {s['ece_after_calibration']:.3f}"
        )
        if "per_cell" in s:
            pc = s["per_cell"]
            lo, hi = pc["accuracy_ci95"]
            line += f"; per cell {pc['correct']}/{pc['n_cells']} = {pc['accuracy']:.1%} (95% CI {lo:.1%}-{hi:.1%})"
        out.append(line)
    return out
