"""The unfamiliar-cell check refitted for an adapted version (issue 19 item 3), and adaptation from one batch's
reviews (item 4). Tiny models, a generated data root (test_trust._fake_data_root), a few images."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
from test_adapt import _blobs
from test_trust import _model_with_split

from conftest import CLASSES, make_tiny_model_dir
from hematovision.app import adapting
from hematovision.cli import main
from hematovision.modeling import persistence, unfamiliar, versions
from hematovision.review.store import UNUSABLE, ReviewStore, thumbnail_png
from hematovision.serving.classifier import Classifier, Prediction
from hematovision.trust import refit_version, warm_refit_cache


def _parent_with_split(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny model with a split manifest of a generated data root: ``(model dir, data root)``."""
    return _model_with_split(tmp_path, "parent")


def _labeled_zip(tmp_path: Path, n: int = 4) -> Path:
    images, labels = _blobs(n)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, (img, lbl) in enumerate(zip(images, labels)):
            zf.writestr(f"{lbl}/{k}.png", cv2.imencode(".png", img[..., ::-1])[1].tobytes())
    z = tmp_path / "lab.zip"
    z.write_bytes(buf.getvalue())
    return z


def test_an_adapted_version_gets_its_own_unfamiliar_check_with_the_lab_cells_in_domain(tmp_path, capsys):
    parent, root = _parent_with_split(tmp_path)
    z = _labeled_zip(tmp_path)
    rc = main(["adapt", str(z), "--name", "lab-refit", "--model", str(parent), "--data", str(root), "--views", "2",
               "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "unfamiliar-cell check refitted for this version" in out and "s in all" in out
    new = versions.adapted_root() / "lab-refit"
    card = persistence.load_card(new)
    tm = unfamiliar.load(new, card.model_sha256)  # fitted for the adapted model.keras, not the parent's
    assert tm is not None and tm.expected_share <= unfamiliar.MAX_UNFAMILIAR_SHARE
    rec = card.training["trust"]
    # 16 labeled cells: 8 (2 views each) in the bank beside the parent's 40 training images, 8 among validation
    assert rec["bank_images"] == 40 and len(tm.bank) == 40 + 8 * 2
    # the batch rule's source-matched reference: the lab's own cells are the source "lab"
    assert list(tm.bank_sources).count("lab") == 16 and len(tm.bank_sources) == len(tm.bank)
    assert list(tm.val_sources).count("lab") == 8 and len(tm.val_sources) == len(tm.val_scores)
    assert rec["lab_cells"]["in_bank"] == 8 and rec["lab_cells"]["in_validation"] == 8
    assert rec["validation_images"] == 48 and "+ 8 of the 16 labeled lab cells" in rec["validation_from"]
    assert tm.record["measured"] == {} and rec["command"].startswith("refit after adaptation")
    assert "Unfamiliar cells" in (new / persistence.CARD_MD).read_text()
    assert rec["features_from"].startswith("the served model") and "written (refit cache)" in rec["features_from"]

    # a second refit of a version of this parent reads the parent's activations from the refit cache: same check
    again = refit_version(new, root)
    assert again.fitted and again.record["features_from"].endswith("read from the refit cache")
    # float16 activations move the tiny model's 48 validation scores a little, and the score's centre and scale are
    # refitted on them (the shipped model's: docs/trust.md). What must hold: the same order of the validation images,
    # the same share called unfamiliar, and a threshold that moved by a small part of the scores' spread.
    tm2 = unfamiliar.load(new, card.model_sha256)
    rank1, rank2 = (np.argsort(np.argsort(np.asarray(t.val_scores))) for t in (tm, tm2))
    assert np.corrcoef(rank1, rank2)[0, 1] > 0.95
    assert abs(again.record["threshold"] - rec["threshold"]) < 0.1 * float(np.ptp(tm.val_scores))
    assert again.record["validation_unfamiliar_share"] == rec["validation_unfamiliar_share"]
    assert again.record["validation_images"] == rec["validation_images"] and again.record["bank_images"] == 40

    # served with the score: the classify CSV's unfamiliar columns are checked, not "not checked"
    folder = tmp_path / "batch"
    folder.mkdir()
    for k, img in enumerate(_blobs(1, seed=9)[0]):
        cv2.imwrite(str(folder / f"c{k}.png"), img[..., ::-1])
    csv_out, summ = tmp_path / "r.csv", tmp_path / "s.json"
    assert main(["classify", str(folder), "--out", str(csv_out), "--model", str(new), "--summary", str(summ),
                 "--quiet"]) == 0
    rows = list(csv.DictReader(csv_out.open()))
    assert all(r["unfamiliarity"] != "" for r in rows) and json.loads(summ.read_text())["unfamiliar_checked"]

    # fit-trust works on the version's folder too (the full fit, measured), with the lab cells again
    capsys.readouterr()
    assert main(["fit-trust", "--model", str(new), "--data", str(root), "--bank", "30", "--measure", "10"]) == 0
    rec = persistence.load_card(new).training["trust"]
    assert rec["bank_images"] == 30 and rec["lab_cells"]["in_validation"] == 8 and rec["measured_on"].startswith("test")


def test_a_cache_warmed_ahead_is_read_by_the_first_adaptations_refit(tmp_path):
    """warm_refit_cache (started while a person reviews a batch's sample) computes what the first refit of an
    adapted version would: that refit reads it. Without the training images it says no, and raises nothing."""
    parent, root = _parent_with_split(tmp_path)
    assert warm_refit_cache(parent, root)
    z = _labeled_zip(tmp_path)
    assert main(["adapt", str(z), "--name", "lab-warm", "--model", str(parent), "--data", str(root), "--views", "2",
                 "--quiet"]) == 0
    rec = persistence.load_card(versions.adapted_root() / "lab-warm").training["trust"]
    assert rec["features_from"].endswith("read from the refit cache")
    assert not warm_refit_cache(parent, tmp_path / "nowhere")


def test_warming_starts_one_background_thread_per_model_folder(tmp_path):
    started = []

    class Thread:
        def __init__(self, target, args, daemon, name):
            assert daemon and target is warm_refit_cache
            self.args = args

        def start(self):
            started.append(self.args)

    model = tmp_path / "m"
    model.mkdir()
    assert adapting.warm_for_adaptation(model, "ROOT", start=Thread)
    assert not adapting.warm_for_adaptation(model, "ROOT", start=Thread)  # already warming or warm
    assert not adapting.warm_for_adaptation(None, start=Thread)  # a model without a folder
    assert started == [(model, "ROOT")]


def test_without_the_training_images_the_version_is_kept_and_the_cli_says_why(tmp_path, capsys):
    parent, _ = _parent_with_split(tmp_path)
    z = _labeled_zip(tmp_path, n=2)
    absent = tmp_path / "no-data-here"
    rc = main(["adapt", str(z), "--name", "lab-nodata", "--model", str(parent), "--data", str(absent), "--views", "1",
               "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    new = versions.adapted_root() / "lab-nodata"
    assert f"unfamiliar-cell check not refitted: training images not found under {absent}" in err
    assert f"fit-trust --model {new} --data {absent}`" in err
    assert (new / persistence.CARD_FILE).is_file() and not (new / unfamiliar.TRUST_FILE).exists()
    assert Classifier.load(new).trust is None  # served as before: "not checked"
    # the parent's split and the lab cells are kept for a later fit-trust
    assert (new / persistence.MANIFEST_FILE).is_file() and (new / unfamiliar.LAB_FILE).is_file()


def test_adapting_from_a_batch_uses_that_batchs_decisions_only(tmp_path):
    base = make_tiny_model_dir(tmp_path / "base")
    version = persistence.load_card(base).version
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    images, labels = _blobs(4)
    preds = [Prediction(f"c{k}.png", "neutrophil", 0.5, (0.1, 0.1, 0.3, 0.5), True, "", f"{k:064x}")
             for k in range(len(images))]
    thumbs = {p.sha256: thumbnail_png(im) for p, im in zip(preds, images)}
    in_b1 = [k for k in range(len(preds)) if k % 4 != 3]  # 3 of every class's 4 images
    store.queue([preds[k] for k in in_b1], CLASSES, version, thumbs, batch="b1", sent=True)
    store.queue([p for k, p in enumerate(preds) if k not in in_b1], CLASSES, version, thumbs, batch="b2", sent=True)
    for p, lbl in zip(preds, labels):
        store.decide(p.sha256, version, lbl, "tester")
    store.decide(preds[0].sha256, version, UNUSABLE, "tester")  # unusable: left out
    labeled, origin = adapting.labeled_images(base, store=store, batch="b1", model_version=version)
    assert len(labeled.inputs) == len(in_b1) - 1 and "batch b1" in origin
    assert {i.name for i in labeled.inputs} == {f"c{k}.png" for k in in_b1[1:]}
    every, _ = adapting.labeled_images(base, store=store)
    assert len(every.inputs) == len(preds) - 1  # all batches: every decision, as before
    attempt = adapting.adapt_version(base, "lab-b1", store=store, batch="b1", model_version=version, refit=False)
    assert attempt.ok, attempt.error
    counts = persistence.load_card(attempt.outcome.path).training["adaptation"]["labeled_counts"]
    assert sum(counts.values()) == len(in_b1) - 1 and attempt.trust is None
    assert counts == {"eosinophil": 2, "lymphocyte": 3, "monocyte": 3, "neutrophil": 3}
