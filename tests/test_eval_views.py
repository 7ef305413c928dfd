"""The evaluation page's figure and table builders: every number read straight from the report."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import CLASSES, image_bytes
from hematovision.app import eval_views as ev
from hematovision.evaluation.evaluate import evaluate_predictions


def synthetic_set(
    n: int = 120, seed: int = 0, name: str = "Kaggle TEST", groups: bool = False
) -> tuple[dict, np.ndarray, np.ndarray]:
    """A per-set report from random but mostly-right probabilities, plus its inputs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    g = [f"cell{i % (n // 10)}" for i in range(n)] if groups else None
    if groups:  # one true class per cell, as in the real data
        y = np.array([int(gi[4:]) % len(CLASSES) for gi in g])
    logits = rng.normal(0, 1, (n, len(CLASSES)))
    logits[np.arange(n), y] += rng.uniform(0, 6, n)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return evaluate_predictions(y, p, CLASSES, 1.5, g, name), y, p


def make_evaluation(model_dir: Path) -> dict:
    """Write an ``evaluation.json`` and a matching ``test_predictions.csv`` into a model directory."""
    sets, frames = {}, []
    for k, (key, name) in enumerate(
        [("kaggle_test", "Kaggle TEST"), ("kaggle_test_simple", "Kaggle TEST_SIMPLE"), ("pbc_test", "PBC test")]
    ):
        rep, y, p = synthetic_set(120 - 30 * k, seed=k, name=name, groups=key == "kaggle_test")
        rep["source"] = "pbc" if key.startswith("pbc") else "kaggle"
        sets[key] = rep
        frames.append(
            pd.DataFrame(
                {
                    "set": key,
                    "file": [f"missing/{key}/{i}.png" for i in range(len(y))],
                    "group": [str(i) for i in range(len(y))],
                    "true_class": [CLASSES[v] for v in y],
                    "predicted_class": [CLASSES[v] for v in p.argmax(1)],
                    "confidence": p.max(1),
                    **{f"p_{c}": p[:, j] for j, c in enumerate(CLASSES)},
                }
            )
        )
    report = {
        "model_version": "tiny-test-model@0",
        "classes": CLASSES,
        "temperature": 1.5,
        "default_threshold": 0.3,
        "sets": sets,
    }
    (Path(model_dir) / "evaluation.json").write_text(json.dumps(report))
    pd.concat(frames).to_csv(Path(model_dir) / "test_predictions.csv", index=False)
    return report


def labeled_zip(n_per_class: int = 2, extra_unknown: bool = True) -> bytes:
    """A zip of class folders with generated images, plus one unknown folder and one unreadable file."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for j, c in enumerate(CLASSES):
            for i in range(n_per_class):
                zf.writestr(f"{c}/img{i}.png", image_bytes(seed=10 * j + i))
        if extra_unknown:
            zf.writestr("basophil/x.png", image_bytes(seed=99))
            zf.writestr("lymphocyte/broken.png", b"not an image")
    return buf.getvalue()


@pytest.fixture(scope="module")
def rep() -> dict:
    return synthetic_set(groups=True)[0]


def test_set_options_orders_shipped_then_uploaded(rep):
    report = {
        "sets": {"pbc_test": dict(rep, name="PBC test"), "kaggle_test": rep, "empty": {"name": "x", "n_images": 0}}
    }
    opts = ev.set_options(report, {"user_1": {"report": {"name": "Mine"}}})
    assert list(opts) == ["kaggle_test", "pbc_test", "user_1"]
    assert opts["user_1"] == "Mine (uploaded)"
    assert ev.set_options(None, {}) == {}


def test_headline_reads_report(rep):
    h = {m["label"]: m for m in ev.headline(rep)}
    assert h["Accuracy"]["value"] == f"{rep['accuracy']:.1%}"
    lo, hi = rep["accuracy_ci95"]
    assert f"{lo:.1%}" in h["Accuracy"]["caption"] and f"{hi:.1%}" in h["Accuracy"]["caption"]
    assert h["Macro-F1"]["value"] == f"{rep['macro_f1']:.3f}"
    assert h["Images"]["value"] == f"{rep['n_images']:,}"
    assert h["ECE after calibration"]["value"] == f"{rep['ece_after_calibration']:.3f}"
    assert f"{rep['ece_before_calibration']:.3f}" in h["ECE after calibration"]["caption"]
    lo, hi = rep["ece_after_calibration_ci95"]
    assert f"{lo:.3f} – {hi:.3f}" in h["ECE after calibration"]["help"]
    assert f"about {rep['ece_floor']['median']:.3f}" in h["ECE after calibration"]["help"]
    assert h["ECE after calibration"]["caption"].endswith(f"noise floor: {rep['ece_floor']['median']:.3f}")
    # A report from before these were recorded still renders.
    old = {k: v for k, v in rep.items() if k not in ("ece_after_calibration_ci95", "ece_floor")}
    assert (
        ev.ece_resolution(old) == ""
        and "sampling noise" not in {m["label"]: m for m in ev.headline(old)}["ECE after calibration"]["help"]
    )


def test_confusion_figure_counts_and_rows(rep):
    fig = ev.confusion_figure(rep)
    assert [list(r) for r in fig.data[0].z] == rep["confusion_matrix"]
    assert list(fig.data[0].x) == CLASSES and list(fig.data[0].y) == CLASSES
    norm = ev.confusion_figure(rep, normalise=True).data[0].z
    for k, c in enumerate(CLASSES):  # the diagonal of the row-normalised view is the stored recall
        assert norm[k][k] == pytest.approx(rep["per_class"][c]["recall"])
        assert sum(norm[k]) == pytest.approx(1.0)


def test_confusion_figure_empty_row_does_not_divide_by_zero():
    s = {"per_class": {c: {} for c in CLASSES[:2]}, "confusion_matrix": [[0, 0], [1, 3]]}
    assert [list(r) for r in ev.confusion_figure(s, True).data[0].z] == [[0.0, 0.0], [0.25, 0.75]]


def test_per_class_table(rep):
    t = ev.per_class_table(rep)
    assert list(t["class"]) == CLASSES
    for _, row in t.iterrows():
        stored = rep["per_class"][row["class"]]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == (
            stored["precision"],
            stored["recall"],
            stored["f1"],
            stored["support"],
        )
    assert t["support"].sum() == rep["n_images"]


def test_roc_figure_one_trace_per_class_with_auc(rep):
    fig = ev.roc_figure(rep)
    assert len(fig.data) == len(CLASSES) + 1
    for tr, c in zip(fig.data, CLASSES):
        assert list(tr.x) == rep["roc"][c]["fpr"] and list(tr.y) == rep["roc"][c]["tpr"]
        assert f"{rep['roc'][c]['auc']:.3f}" in tr.name


def test_reliability_figure_before_and_after(rep):
    fig = ev.reliability_figure(rep)
    before, after = fig.data[1], fig.data[2]
    nonempty = [b for b in rep["reliability_after"] if b["count"]]
    assert list(after.y) == [b["accuracy"] for b in nonempty]
    assert list(after.x) == [b["confidence"] for b in nonempty]
    assert len(before.x) == sum(1 for b in rep["reliability_before"] if b["count"])
    assert f"{rep['ece_after_calibration']:.3f}" in after.name


def test_risk_coverage_marks_current_threshold(rep):
    fig = ev.risk_coverage_figure(rep, 0.9)
    pts = [p for p in rep["risk_coverage"] if p["accuracy_accepted"] is not None]
    assert list(fig.data[0].x) == [p["flagged_share"] for p in pts]
    cur = ev.point_at_threshold(rep["risk_coverage"], 0.9)
    assert cur["threshold"] == pytest.approx(0.9)
    assert list(fig.data[1].x) == [cur["flagged_share"]] and list(fig.data[1].y) == [cur["accuracy_accepted"]]
    assert ev.point_at_threshold(rep["risk_coverage"], 0.1) is None
    assert len(ev.risk_coverage_figure(rep).data) == 1


def test_per_cell_summary(rep):
    text = ev.per_cell_summary(rep)
    pc = rep["per_cell"]
    assert f"{pc['correct']} of {pc['n_cells']}" in text and f"{pc['accuracy']:.1%}" in text
    lo, hi = pc["image_accuracy_ci95_by_cell"]
    assert f"{lo:.1%} – {hi:.1%} when whole cells are resampled" in text
    assert ev.per_cell_summary({"accuracy": 0.5}) is None
    assert "about 10 augmented copies" in ev.per_cell_note(
        rep
    ) and f"only {pc['n_cells']} original cells" in ev.per_cell_note(rep)
    # One image per cell (Kaggle TEST_SIMPLE): nothing to say.
    assert ev.per_cell_summary(dict(rep, per_cell=dict(pc, n_cells=rep["n_images"]))) is None


def test_misclassified_filters_sorts_and_caps():
    df = pd.DataFrame({"set": ["a"] * 30 + ["b"], "file": [f"f{i}" for i in range(31)], "true_class": ["x"] * 31,
                       "predicted_class": ["y"] * 28 + ["x", "x", "y"], "confidence": np.linspace(0.3, 0.9, 31)})
    wrong = ev.misclassified(df, "a")
    assert len(wrong) == ev.GALLERY_CAP
    assert list(wrong["confidence"]) == sorted(wrong["confidence"], reverse=True)
    assert (wrong["true_class"] != wrong["predicted_class"]).all() and "f30" not in set(wrong["file"])
    assert ev.misclassified(None).empty


def test_resolve_image(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"x")
    assert ev.resolve_image("a/x.png", tmp_path) == tmp_path / "a" / "x.png"
    assert ev.resolve_image("a/missing.png", tmp_path) is None


def test_downloads_round_trip(rep):
    assert json.loads(ev.report_json(rep)) == rep
    frame = pd.DataFrame({"file": ["a.png"], "confidence": [0.5]})
    assert pd.read_csv(io.BytesIO(ev.predictions_csv(frame))).equals(frame)
    assert list(ev.skipped_table({"skipped": [["a", "why"]]}).itertuples(index=False, name=None)) == [("a", "why")]
    assert ev.skipped_table({}).empty


def test_helpers_write_matching_files(tmp_path):
    report = make_evaluation(tmp_path)
    preds = pd.read_csv(tmp_path / "test_predictions.csv")
    for key, s in report["sets"].items():
        sub = preds[preds["set"] == key]
        assert len(sub) == s["n_images"]
        assert (sub["true_class"] == sub["predicted_class"]).mean() == pytest.approx(s["accuracy"])
    assert "per_cell" in report["sets"]["kaggle_test"] and "per_cell" not in report["sets"]["pbc_test"]
    names = zipfile.ZipFile(io.BytesIO(labeled_zip())).namelist()
    assert "basophil/x.png" in names
