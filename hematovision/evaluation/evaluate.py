"""Evaluate a model on labeled images and write ``evaluation.json`` and per-image predictions.

Evaluation goes through :meth:`Classifier.classify`, the same path the CLI and
the dashboard use, so the figures describe the product as shipped.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..stats import calibration as cal
from ..data import datasets as ds
from ..stats import metrics as m
from ..modeling import persistence
from ..config import data_root
from ..imaging.sources import ImageInput, display_name, from_bytes, iter_zip


def evaluate_predictions(y_true: np.ndarray, probs: np.ndarray, classes: list[str], temperature: float, groups: list[str] | None = None, name: str = "") -> dict:
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
        "per_class": {c: {"precision": float(pc["precision"][k]), "recall": float(pc["recall"][k]), "f1": float(pc["f1"][k]), "support": int(pc["support"][k])} for k, c in enumerate(classes)},
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


@dataclass
class LabeledInputs:
    """Images with true labels, and the ones that could not be labeled (never fatal)."""

    inputs: list[ImageInput] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def labeled_from_folder(path: Path, classes: list[str]) -> LabeledInputs:
    """A folder of class folders (``root/<class>/**/image``)."""
    out = LabeledInputs()
    for label, folder, f in ds.iter_class_folders(Path(path)):
        name = f.relative_to(path).as_posix()
        if label is None or label not in classes:
            out.skipped.append((name, f"unknown class folder '{folder}' (known: {', '.join(classes)})"))
            continue
        out.inputs.append(ImageInput(name, (lambda p=f: p.read_bytes())))
        out.labels.append(label)
        out.groups.append(name)
    return out


def labeled_from_path(path: Path, classes: list[str]) -> LabeledInputs:
    """A folder of class folders, or a zip of them; FileNotFoundError when it is neither."""
    path = Path(path)
    if path.is_dir():
        return labeled_from_folder(path, classes)
    if path.is_file():
        return labeled_from_zip(path.name, path.read_bytes(), classes)
    raise FileNotFoundError(f"no such folder or zip: {path}")


def labeled_from_zip(name: str, data: bytes, classes: list[str]) -> LabeledInputs:
    """A zip of class folders: the folder holding each image names its class.

    Members come through :func:`sources.iter_zip`, so the archive limits and
    member checks of the classify path apply here too; a member's input name
    is its path inside the archive.
    """
    out = LabeledInputs()
    prefix = display_name(name) + "/"
    for item in iter_zip(name, data):
        if not item.name.startswith(prefix):  # the archive itself is unusable
            out.skipped.append((name, item.error))
            continue
        member = item.name[len(prefix):]
        parts = member.split("/")
        label = ds.normalise_label(parts[-2], classes) if len(parts) >= 2 else None
        if label is None:
            where = parts[-2] if len(parts) >= 2 else "(no folder)"
            out.skipped.append((member, f"unknown class folder '{where}' (known: {', '.join(classes)})"))
        elif item.error:
            out.skipped.append((member, item.error))
        else:
            out.inputs.append(ImageInput(member, item.read))
            out.labels.append(label)
            out.groups.append(member)
    return out


def labeled_from_csv(images: list[tuple[str, bytes]], labels_csv: bytes, classes: list[str]) -> LabeledInputs:
    """Uploaded images plus a CSV with columns ``file`` and ``label`` (or ``class``)."""
    out = LabeledInputs()
    try:
        table = pd.read_csv(io.BytesIO(labels_csv), dtype=str)
    except Exception as exc:
        out.skipped.append(("labels.csv", f"unreadable CSV ({type(exc).__name__})"))
        return out
    cols = {c.lower().strip(): c for c in table.columns}
    fcol, lcol = cols.get("file") or cols.get("filename"), cols.get("label") or cols.get("class")
    if not fcol or not lcol:
        out.skipped.append(("labels.csv", "the CSV needs columns 'file' and 'label'"))
        return out
    by_name = {Path(str(r[fcol])).name: str(r[lcol]) for _, r in table.iterrows()}
    for name, data in images:
        raw = by_name.get(Path(name).name)
        label = ds.normalise_label(raw, classes) if raw else None
        if label is None:
            out.skipped.append((name, "no label in the CSV" if raw is None else f"unknown class '{raw}'"))
            continue
        out.inputs.append(from_bytes(name, data))
        out.labels.append(label)
        out.groups.append(name)
    return out


def evaluate_labeled(classifier, labeled: LabeledInputs, name: str, progress: Callable[[int], None] | None = None, per_cell: bool = False) -> tuple[dict, pd.DataFrame]:
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
        rows.append({"file": p.file, "group": group, "true_class": label, "predicted_class": p.predicted_class, "confidence": p.confidence, **{f"p_{c}": v for c, v in zip(classes, p.probabilities)}})
    frame = pd.DataFrame(rows, columns=["file", "group", "true_class", "predicted_class", "confidence"] + [f"p_{c}" for c in classes])
    if not rows:
        return {"name": name, "n_images": 0, "skipped": [list(s) for s in skipped]}, frame
    y = np.array([classes.index(r) for r in frame["true_class"]])
    probs = frame[[f"p_{c}" for c in classes]].to_numpy()
    report = evaluate_predictions(y, probs, classes, classifier.card.temperature, list(frame["group"]) if per_cell else None, name)
    report["skipped"] = [list(s) for s in skipped]
    return report, frame


def evaluate_model_on_test_sets(model_dir: Path, root: Path | None = None, progress_factory=None) -> dict:
    """Evaluate on Kaggle TEST, Kaggle TEST_SIMPLE and PBC test; write the results beside the model."""
    from tqdm import tqdm

    from ..serving.classifier import Classifier

    root = data_root(root)
    model_dir = Path(model_dir)
    clf = Classifier.load(model_dir, batch_size=64)
    manifest = model_dir / persistence.MANIFEST_FILE
    images = ds.read_manifest(manifest, root) if manifest.exists() else ds.discover(root)
    report = {
        "model_version": clf.version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": clf.classes_,
        "temperature": clf.card.temperature,
        "default_threshold": clf.default_threshold,
        "split": "see split_manifest.csv and model_card.json (training.split_rules); these images were never trained or tuned on",
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
            rep, frame = evaluate_labeled(clf, labeled, title, progress=lambda n: bar.update(n - bar.n), per_cell=key.startswith("kaggle_test"))
        rep["source"] = subset[0].source
        report["sets"][key] = rep
        frame.insert(0, "set", key)
        frames.append(frame)
    previous = model_dir / persistence.EVALUATION_FILE
    if previous.exists():  # figures about the recipe, not this model's predictions: kept (see loso.record_in_model)
        try:
            old = json.loads(previous.read_text())
            if "leave_one_source_out" in old:
                report["leave_one_source_out"] = old["leave_one_source_out"]
        except ValueError:
            pass
    previous.write_text(json.dumps(report, indent=1) + "\n")
    if frames:
        pd.concat(frames).to_csv(model_dir / persistence.PREDICTIONS_FILE, index=False, float_format="%.6f")
    return report


def summary_lines(report: dict) -> list[str]:
    """Headline figures, one line per set, for the CLI and the README."""
    out = []
    for key, s in report.get("sets", {}).items():
        if not s.get("n_images"):
            continue
        lo, hi = s["accuracy_ci95"]
        line = f"{s['name']}: {s['n_images']} images, accuracy {s['accuracy']:.2%} (95% CI {lo:.1%}-{hi:.1%}), macro-F1 {s['macro_f1']:.3f}, ECE {s['ece_before_calibration']:.3f} -> {s['ece_after_calibration']:.3f}"
        if "per_cell" in s:
            pc = s["per_cell"]
            line += f"; per cell {pc['correct']}/{pc['n_cells']} = {pc['accuracy']:.1%} (95% CI {pc['accuracy_ci95'][0]:.1%}-{pc['accuracy_ci95'][1]:.1%})"
        out.append(line)
    return out
