"""The unfamiliar-cell score (modeling.unfamiliar, trust/), the batch rule (stats.domain_shift) and the run
summary's trust fields, on synthetic features and on the tiny model."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import CLASSES, image_bytes, make_tiny_model_dir
from hematovision.app import batching
from hematovision.cli import main
from hematovision.detection.report import summarise_images
from hematovision.imaging.decode import read_rgb
from hematovision.imaging.framing import model_input
from hematovision.imaging.sources import iter_paths
from hematovision.modeling import persistence, unfamiliar
from hematovision.reports import tables as report
from hematovision.serving.classifier import Classifier, Prediction
from hematovision.serving.litert import LiteRTRuntime, export_litert, generated_images
from hematovision.stats.domain_shift import (
    MIN_BATCH,
    MIN_RANK,
    MIN_SHARE,
    binom_tail,
    critical_share,
    domain_shift,
    mean_rank,
    rank_p_value,
)
from hematovision.trust import banner_text, frame_shift


def _cluster(n, dim=16, seed=0, centre=0.0):
    rng = np.random.default_rng(seed)
    base = np.zeros(dim)
    base[0] = 5.0 + centre
    return base + rng.normal(0, 1, (n, dim))


def _probs(n, conf=0.9, seed=0):
    rng = np.random.default_rng(seed)
    p = np.full((n, 4), (1 - conf) / 3)
    p[np.arange(n), rng.integers(0, 4, n)] = conf
    return p


def _fitted(with_outliers=True):
    bank = _cluster(300, seed=1)
    val = _cluster(200, seed=2)
    out = _cluster(50, seed=3) * np.r_[-1, np.ones(15)] if with_outliers else None  # the mirror image: far away
    return unfamiliar.fit(bank, val, _probs(200, seed=2), k=5, outlier_features=out, model_sha256="abc"), val


# ---------------------------------------------------------------------- the score


def test_threshold_calls_at_most_five_percent_of_validation_unfamiliar():
    tm, val = _fitted()
    s = tm.score(val, _probs(200, seed=2))
    assert np.mean(tm.unfamiliar(s)) <= unfamiliar.MAX_UNFAMILIAR_SHARE
    assert (
        np.mean(s >= tm.threshold) > unfamiliar.MAX_UNFAMILIAR_SHARE
    )  # the lowest such threshold: one step lower breaks the rule
    assert tm.expected_share == pytest.approx(np.mean(tm.unfamiliar(s)))


def test_choose_threshold_with_ties_never_exceeds_the_share():
    scores = np.r_[np.zeros(90), np.ones(10)]  # 10% tied at the top
    thr = unfamiliar.choose_threshold(scores, 0.05)
    assert np.mean(scores > thr) <= 0.05
    assert unfamiliar.choose_threshold(np.arange(100.0), 0.05) == 94.0  # 95..99 above: exactly 5%
    with pytest.raises(ValueError):
        unfamiliar.choose_threshold(np.zeros(0))


def test_far_features_and_low_confidence_score_higher():
    tm = unfamiliar.fit(
        _cluster(300, seed=1),
        _cluster(200, seed=2),
        _probs(200, seed=2),
        k=5,
        outlier_features=_cluster(50, seed=3) * np.r_[-1, np.ones(15)],
        weights={"knn": 1.0, "uncertainty": 0.5, "outlier": 0.5},
    )
    near = tm.score(_cluster(50, seed=4), _probs(50, 0.9, seed=4))
    far = tm.score(_cluster(50, seed=4) * np.r_[-1, np.ones(15)], _probs(50, 0.9, seed=4))
    unsure = tm.score(_cluster(50, seed=4), _probs(50, 0.3, seed=4))
    assert far.mean() > near.mean() + 1 and tm.unfamiliar(far).mean() > 0.9
    assert unsure.mean() > near.mean()


def test_kth_distance_is_cosine_distance_to_the_kth_neighbour():
    bank = unfamiliar.l2_normalise(np.eye(4))
    q = unfamiliar.l2_normalise(np.array([[1.0, 0.0, 0.0, 0.0]]))
    assert unfamiliar.kth_distance(q, bank, 1)[0] == pytest.approx(0.0)
    assert unfamiliar.kth_distance(q, bank, 2)[0] == pytest.approx(1.0)


def test_save_and_load_round_trip(tmp_path):
    tm, val = _fitted()
    tm.record = {"bank_images": 300}
    path = unfamiliar.save(tm, tmp_path)
    assert path.name == unfamiliar.TRUST_FILE
    back = unfamiliar.load(tmp_path, "abc")
    assert back is not None and back.record == {"bank_images": 300} and back.k == 5
    assert back.bank.dtype == np.float32 and back.outlier_bank is not None
    p = _probs(200, seed=2)
    np.testing.assert_allclose(back.score(val, p), tm.score(val, p), atol=1e-5)
    assert back.threshold == tm.threshold and back.expected_share == tm.expected_share


def test_sources_are_saved_and_each_image_gets_its_nearest_banks_source(tmp_path):
    bank = np.vstack([_cluster(100, seed=1), _cluster(100, seed=4)[:, ::-1]])
    bank_src = ["a"] * 100 + ["b"] * 100
    val = np.vstack([_cluster(60, seed=2), _cluster(60, seed=5)[:, ::-1]])
    tm = unfamiliar.fit(bank, val, _probs(120), k=5, bank_sources=bank_src, val_sources=["a"] * 60 + ["b"] * 60)
    assert tm.has_sources and sorted(set(tm.val_sources)) == ["a", "b"]
    # the sources follow the validation scores into sorted order
    raw = tm.score(val, _probs(120))
    np.testing.assert_array_equal(np.sort(raw[60:]).astype(np.float32), tm.val_scores[tm.val_sources == "b"])
    unfamiliar.save(tm, tmp_path)
    back = unfamiliar.load(tmp_path)
    assert back.has_sources and list(back.nearest_source(val[[0, 1, 70, 71]])) == ["a", "a", "b", "b"]
    assert unfamiliar.fit(bank, val, _probs(120), k=5).nearest_source(val) is None  # no sources recorded


def test_source_matched_rank_sees_a_shift_the_pooled_reference_hides():
    rng = np.random.default_rng(2)
    # two sources: "low"'s validation scores sit well below "high"'s; the pooled reference mixes them
    ref = np.r_[rng.normal(-1.0, 0.5, 1000), rng.normal(1.0, 0.5, 1000)]
    ref_src = np.array(["low"] * 1000 + ["high"] * 1000)
    thr = np.quantile(ref, 0.95)
    moved = rng.normal(0.0, 0.5, 200)  # "low" images moved up: at the pooled middle (rank ~0.5)
    src = np.array(["low"] * 200)
    pooled = domain_shift(moved > thr, 0.05, scores=moved, reference=ref)
    matched = domain_shift(moved > thr, 0.05, scores=moved, reference=ref, sources=src, reference_sources=ref_src)
    assert not pooled.detected and pooled.rank < 0.6 and pooled.rank_source == ""
    assert matched.detected and matched.reason == "score_distribution" and matched.rank_source == "low"
    assert matched.rank > 0.9 and matched.rank_threshold == MIN_RANK  # an unknown source: the pooled floor
    assert "most similar training laboratory" in matched.message
    # in-domain batches of either source, or mixed, stay quiet
    for _ in range(50):
        lo, hi = rng.normal(-1.0, 0.5, 100), rng.normal(1.0, 0.5, 100)
        s = np.r_[lo, hi]
        r = domain_shift(s > thr, 0.05, scores=s, reference=ref, sources=np.r_[src[:100], ["high"] * 100],
                         reference_sources=ref_src)
        assert not r.detected and 0.35 < r.rank < 0.65


def test_projection_is_fitted_on_the_bank_and_saved(tmp_path):
    bank, val = _cluster(300, seed=1), _cluster(200, seed=2)
    tm = unfamiliar.fit(bank, val, _probs(200, seed=2), k=5, dims=4)
    assert tm.projection.shape == (16, 4) and tm.bank.shape == (300, 4)
    np.testing.assert_allclose(np.linalg.norm(tm.bank, axis=1), 1.0, atol=1e-2)
    unfamiliar.save(tm, tmp_path)
    back = unfamiliar.load(tmp_path)
    np.testing.assert_allclose(back.score(val, _probs(200, seed=2)), tm.score(val, _probs(200, seed=2)), atol=1e-4)
    far = _cluster(50, seed=4) * np.r_[-1, np.ones(15)]
    assert back.unfamiliar(back.score(far, _probs(50, seed=4))).mean() > 0.9


def test_load_ignores_missing_foreign_and_damaged_files(tmp_path, caplog):
    assert unfamiliar.load(tmp_path) is None  # no file: nothing, quietly
    tm, _ = _fitted(with_outliers=False)
    unfamiliar.save(tm, tmp_path)
    with caplog.at_level(logging.WARNING, logger="hematovision.trust"):
        assert unfamiliar.load(tmp_path, "another-model") is None
    assert "fit-trust" in caplog.text
    (tmp_path / unfamiliar.TRUST_FILE).write_bytes(b"not an npz")
    assert unfamiliar.load(tmp_path, "abc") is None


# ---------------------------------------------------------------------- the batch


def test_too_few_images_to_tell():
    r = domain_shift([True] * (MIN_BATCH - 1), 0.05)
    assert not r.detected and r.n == MIN_BATCH - 1 and "Too few images" in r.message


def test_batch_rule_fires_on_a_shifted_batch_and_not_on_an_in_domain_one():
    rng = np.random.default_rng(0)
    quiet = [domain_shift(rng.random(200) < 0.05, 0.05).detected for _ in range(200)]
    assert np.mean(quiet) <= 0.01
    loud = domain_shift(rng.random(50) < 0.5, 0.05)
    assert (
        loud.detected and "unlike the images the model was trained on" in loud.message and loud.score >= loud.threshold
    )
    assert critical_share(50, 0.05) >= MIN_SHARE and critical_share(2000, 0.05) == pytest.approx(MIN_SHARE)


def test_mean_rank_against_a_direct_count_and_its_p_value():
    ref = np.array([0.0, 1.0, 1.0, 2.0])
    # 1.0 is above one reference score and ties two (half each): (1 + 1) / 4; 3.0 is above all four
    assert mean_rank([1.0], ref) == pytest.approx(0.5) and mean_rank([3.0, -1.0], ref) == pytest.approx(0.5)
    assert mean_rank([3.0], ref) == 1.0 and np.isnan(mean_rank([], ref))
    assert rank_p_value(0.5, 50, 1000) == pytest.approx(0.5)
    assert rank_p_value(0.7, 50, 1000) < 1e-4 < rank_p_value(0.55, 50, 1000)


def test_score_distribution_rule_fires_on_a_moderate_shift_the_tail_share_misses():
    rng = np.random.default_rng(1)
    ref = np.sort(rng.normal(size=2000))
    thr = np.quantile(ref, 0.95)
    quiet = [domain_shift((s := rng.normal(size=200)) > thr, 0.05, scores=s, reference=ref) for _ in range(200)]
    assert np.mean([q.detected for q in quiet]) <= 0.01 and all(0.4 < q.rank < 0.6 for q in quiet)
    # every score moved up by 2.5 standard deviations: mean rank ~0.96 (MIN_RANK is 0.9)
    moved = rng.normal(2.5, 1.0, size=200)
    r = domain_shift(moved > thr, 0.05, scores=moved, reference=ref, min_share=0.99)  # the share rule made deaf
    assert r.detected and r.reason == "score_distribution" and r.rank >= MIN_RANK and r.rank_p_value < 1e-3
    assert "less familiar than" in r.message and "unlike the images the model was trained on" in r.message
    assert not domain_shift(moved > thr, 0.05, min_share=0.99).detected  # without the scores: the tail share only
    mild = rng.normal(1.0, 1.0, size=200)  # mean rank ~0.76: under the floor, whatever its p-value
    assert not domain_shift(mild > thr, 0.05, scores=mild, reference=ref, min_share=0.99).detected
    few = domain_shift(moved[:5] > thr, 0.05, scores=moved[:5], reference=ref)
    assert not few.detected and "Too few images" in few.message and np.isnan(few.rank)


def test_without_trust_statistics_the_batch_is_not_checked():
    r = domain_shift([False] * 100, None)
    assert not r.detected and "not checked" in r.message


# ---------------------------------------------------------------------- the summary


def _pred(name, cls, conf, unfamiliar_=False, error=""):
    if error:
        return Prediction(name, error=error)
    probs = tuple(conf if c == cls else (1 - conf) / 3 for c in CLASSES)
    return Prediction(
        name,
        cls,
        conf,
        probs,
        conf < 0.5 or unfamiliar_,
        unfamiliar=unfamiliar_,
        unfamiliarity=3.0 if unfamiliar_ else 0.0,
    )


def test_summary_schema_and_unfamiliar_cells_left_out_of_the_differential():
    preds = [_pred(f"n{k}", "neutrophil", 0.9) for k in range(30)] + [
        _pred(f"l{k}", "lymphocyte", 0.4) for k in range(10)
    ]
    preds += [_pred(f"u{k}", "monocyte", 0.95, True) for k in range(20)] + [_pred("bad", "", 0, error="not an image")]
    s = json.loads(summarise_images(preds, CLASSES, 0.5, "m@1", expected_unfamiliar=0.05).to_json())
    assert set(s) >= {"counts", "differential", "flagged", "unfamiliar", "errors", "domain_shift"}
    assert (s["inputs"], s["classified"], s["errors"], s["flagged"], s["unfamiliar"], s["low_confidence"]) == (
        61,
        60,
        1,
        30,
        20,
        10,
    )
    assert (
        s["counts"]["monocyte"] == 0 and s["differential"]["monocyte"]["count"] == 0 and s["differential_cells"] == 40
    )
    assert s["differential"]["neutrophil"] == {"count": 30, "percent": 75.0}
    assert set(s["domain_shift"]) >= {"detected", "score", "threshold", "n", "message", "rank", "rank_p_value"}
    assert s["domain_shift"]["detected"] and s["domain_shift"]["n"] == 60 and s["unfamiliar_checked"] is True
    assert s["domain_shift"]["rank"] is None and "scores" not in s  # no validation scores given: share rule only
    assert _pred("x", "monocyte", 0.95, True).flag_reason == "unfamiliar"
    assert _pred("y", "monocyte", 0.4).flag_reason == "low_confidence" and _pred("z", "monocyte", 0.9).flag_reason == ""


def test_summary_compares_the_scores_with_the_validation_scores():
    # 40 familiar-looking images whose scores all sit above most validation scores, none past the threshold (3.0)
    preds = [replace(_pred(f"n{k}", "neutrophil", 0.9), unfamiliarity=1.7 + 0.005 * k) for k in range(40)]
    ref = np.linspace(-2.0, 2.0, 400)
    s = summarise_images(preds, CLASSES, 0.5, "m", expected_unfamiliar=0.05, reference_scores=ref).as_dict()
    shift = s["domain_shift"]
    assert shift["detected"] and shift["reason"] == "score_distribution" and shift["unfamiliar"] == 0
    assert shift["rank"] > 0.9 and shift["rank_threshold"] == MIN_RANK and "scores" not in s
    assert "reference_scores" not in s
    calm = [replace(_pred(f"c{k}", "neutrophil", 0.9), unfamiliarity=float(v)) for k, v in enumerate(ref[::10])]
    quiet = summarise_images(calm, CLASSES, 0.5, "m", 0.05, reference_scores=ref).as_dict()["domain_shift"]
    assert not quiet["detected"] and quiet["rank"] == pytest.approx(0.5, abs=0.02) and quiet["reason"] == ""


def test_summary_of_a_small_batch_says_too_few():
    s = summarise_images([_pred(f"n{k}", "neutrophil", 0.9) for k in range(5)], CLASSES, 0.5, "m", 0.05).as_dict()
    shift = s["domain_shift"]
    assert not shift["detected"] and "Too few images" in shift["message"] and shift["threshold"] is None


def test_binomial_tail_against_direct_sums():
    n, p = 20, 0.05
    tail = binom_tail(n, p)
    direct = [sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(x, n + 1)) for x in range(n + 1)]
    np.testing.assert_allclose(tail, direct, rtol=1e-9, atol=1e-15)
    assert tail[0] == pytest.approx(1.0) and tail[1] == pytest.approx(1 - 0.95**20)


# ---------------------------------------------------------------------- on the tiny model


def _write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        p = folder / f"img{k:03d}.png"
        p.write_bytes(image_bytes(size=(48 + k % 5, 40 + k % 7), seed=seed + k))
        out.append(p)
    return out


@pytest.fixture(scope="module")
def trusted_model(tmp_path_factory):
    """A tiny model with a trust.npz fitted on generated images, and its validation images."""
    d = make_tiny_model_dir(tmp_path_factory.mktemp("tiny_trust"))
    clf = Classifier.load(d)
    base = tmp_path_factory.mktemp("trust_images")
    bank = [read_rgb(p) for p in _write_images(base / "bank", 60, seed=100)]
    val_paths = _write_images(base / "val", 60, seed=500)
    val = [read_rgb(p) for p in val_paths]
    _, bank_f = clf.proba_and_features(bank)
    val_p, val_f = clf.proba_and_features(val)
    card = persistence.load_card(d)
    unfamiliar.save(unfamiliar.fit(bank_f, val_f, val_p, k=3, model_sha256=card.model_sha256), d)
    return d, val_paths


def test_classifier_scores_images_and_flags_unfamiliar_ones(trusted_model):
    d, val_paths = trusted_model
    clf = Classifier.load(d)
    assert clf.trust is not None
    preds = list(clf.classify(iter_paths([str(p) for p in val_paths]), threshold=0.0))
    assert all(np.isfinite(p.unfamiliarity) for p in preds)
    assert np.mean([p.unfamiliar for p in preds]) <= unfamiliar.MAX_UNFAMILIAR_SHARE  # the images it was thresholded on
    assert all(p.flagged == p.unfamiliar for p in preds)  # threshold 0: only unfamiliar images are flagged
    assert all(p.flag_reason == ("unfamiliar" if p.unfamiliar else "") for p in preds)


def test_cli_writes_trust_columns_and_summary(trusted_model, tmp_path, capsys):
    d, val_paths = trusted_model
    folder = tmp_path / "batch"
    folder.mkdir()
    for p in val_paths[:25]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.png").write_bytes(b"nope")
    out, summ = tmp_path / "r.csv", tmp_path / "s.json"
    assert main(["classify", str(folder), "--out", str(out), "--model", str(d), "--summary", str(summ), "--quiet"]) == 0
    rows = list(csv.reader(out.open()))
    head = rows[0]
    assert head[:9] == ["file", "predicted_class", "confidence"] + [f"p_{c}" for c in CLASSES] + ["flagged", "error"]
    assert head[9:] == ["threshold", "model_version", "unfamiliar", "flag_reason", "unfamiliarity"]
    assert {r[head.index("flag_reason")] for r in rows[1:]} <= {"", "unfamiliar", "low_confidence"}
    s = json.loads(summ.read_text())
    assert s["inputs"] == 26 and s["errors"] == 1 and s["unfamiliar_checked"] is True
    assert s["domain_shift"]["n"] == 25 and isinstance(s["domain_shift"]["detected"], bool)
    capsys.readouterr()
    assert (
        main(["classify", str(folder), "--out", str(out), "--model", str(d), "--quiet"]) == 0
    )  # no --summary: the verdict is printed all the same
    assert s["domain_shift"]["message"] in capsys.readouterr().err


def _shifted_batch(folder: Path, val_paths: list[Path]) -> Path:
    """20 of the validation images and 20 noise images: the batch is called shifted, half of it familiar."""
    from PIL import Image

    folder.mkdir()
    for p in val_paths[:20]:
        shutil.copy(p, folder / p.name)
    rng = np.random.default_rng(0)
    for k in range(20):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / f"noise{k:02d}.png")
    return folder


def test_cli_holds_a_shifted_batch_for_review(trusted_model, tmp_path, capsys):
    d, val_paths = trusted_model
    folder = _shifted_batch(tmp_path / "batch", val_paths)
    args = ["classify", str(folder), "--model", str(d), "--threshold", "0", "--quiet"]
    out, summ = tmp_path / "r.csv", tmp_path / "s.json"
    assert main([*args, "--out", str(out), "--summary", str(summ)]) == 0
    err = capsys.readouterr().err
    frame = pd.read_csv(out, keep_default_na=False)
    s = json.loads(summ.read_text())
    assert s["domain_shift"]["detected"] and s["batch_held"] and s["flagged"] == 40 and frame["flagged"].all()
    familiar = ~frame["unfamiliar"]
    assert s["held"] == familiar.sum() > 0 and set(frame.loc[familiar, "flag_reason"]) == {"batch_shift"}
    assert "Batch held for review" in err and f"{s['held']} of them only because of the batch" in err
    assert main([*args, "--out", "-"]) == 0  # standard output: the same rows, held
    assert capsys.readouterr().out.replace("\r\n", "\n") == out.read_text(encoding="utf-8").replace("\r\n", "\n")
    assert main([*args, "--out", str(out), "--summary", str(summ), "--no-batch-hold"]) == 0
    kept = pd.read_csv(out, keep_default_na=False)
    assert not kept.loc[familiar, "flagged"].any() and "Batch held" not in capsys.readouterr().err
    assert json.loads(summ.read_text())["batch_held"] is False


def test_held_rows_reach_a_stream_path_and_a_linked_file_keeps_its_link(trusted_model, tmp_path, capfd):
    d, val_paths = trusted_model
    folder = _shifted_batch(tmp_path / "batch", val_paths)
    args = ["classify", str(folder), "--model", str(d), "--threshold", "0", "--quiet"]
    assert main([*args, "--out", "/dev/stdout"]) == 0  # a device path: written once, never read back or replaced
    out = capfd.readouterr().out
    assert Path("/dev/stdout").is_symlink() and "batch_shift" in out and out.count("\n") == 41
    target, link = tmp_path / "real.csv", tmp_path / "link.csv"
    link.symlink_to(target)
    assert main([*args, "--out", str(link)]) == 0
    assert link.is_symlink() and "batch_shift" in target.read_text() and not list(tmp_path.glob(".*tmp"))


def test_model_without_trust_file_degrades_gracefully(tmp_path, capsys):
    d = make_tiny_model_dir(tmp_path / "m")
    assert Classifier.load(d).trust is None
    imgs = _write_images(tmp_path / "in", 3)
    out, summ = tmp_path / "r.csv", tmp_path / "s.json"
    assert (
        main(
            ["classify", str(tmp_path / "in"), "--out", str(out), "--model", str(d), "--summary", str(summ), "--quiet"]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(imgs) and all(r["unfamiliar"] == "False" and r["unfamiliarity"] == "" for r in rows)
    s = json.loads(summ.read_text())
    assert s["unfamiliar_checked"] is False and s["unfamiliar"] == 0 and "not checked" in s["domain_shift"]["message"]
    assert "not checked" in capsys.readouterr().err


def test_apply_threshold_keeps_unfamiliar_images_flagged(trusted_model):
    d, val_paths = trusted_model
    clf = Classifier.load(d)
    preds = list(clf.classify(iter_paths([str(p) for p in val_paths])))
    frame = report.predictions_frame(preds, clf.classes_)
    frame.loc[0, "unfamiliar"] = True
    relaxed = report.apply_threshold(frame, 0.0)
    assert relaxed.loc[0, "flagged"] and relaxed.loc[0, "flag_reason"] == "unfamiliar"
    assert not relaxed.loc[1:, "flagged"].any() or relaxed.loc[1:, "unfamiliar"].any()
    strict = report.apply_threshold(frame, 1.01)
    assert strict["flagged"].all() and set(strict["flag_reason"]) <= {"unfamiliar", "low_confidence"}


def test_unfamiliar_cells_go_to_the_review_queue_and_leave_the_differential():
    cache = batching.ResultCache()
    entries = [
        batching.Entry("a.png", "aa", data=b"a"),
        batching.Entry("b.png", "bb", data=b"b"),
        batching.Entry("c.png", "cc", data=b"c"),
    ]
    cache.put(("aa", "m"), _pred("a.png", "neutrophil", 0.99, unfamiliar_=True))
    cache.put(("bb", "m"), _pred("b.png", "neutrophil", 0.99))
    cache.put(("cc", "m"), _pred("c.png", "lymphocyte", 0.40))
    queued = [p.file for p, _ in batching.for_review(entries, cache, "m", 0.5)]
    assert queued == ["a.png", "c.png"]  # the confident but unfamiliar one too
    preds, thumbs = batching.assemble(entries, cache, "m")
    frame = report.with_reviews(batching.results_frame(preds, thumbs, CLASSES, 0.5), {})
    s = batching.summarise(frame, CLASSES)
    assert s.n_unidentified == 1 and int(s.differential["count"].sum()) == 2


def test_litert_export_emits_the_pooled_features_of_the_same_pass(tmp_path):
    import keras

    d = make_tiny_model_dir(tmp_path / "m")
    rec = export_litert(d)
    assert rec["outputs"] == ["probabilities", "features"]
    rt = LiteRTRuntime(d / persistence.LITERT_FILE)
    assert rt.has_features
    lite = Classifier.load(d, batch_size=5)
    assert lite.backend == "litert"
    imgs = generated_images(7, seed=5)
    p, f = lite.proba_and_features(imgs)
    net = persistence.load_keras_model(d)
    ref = keras.Model(net.input, net.get_layer("pool").output)
    batch = np.stack([model_input(im, 32, "full") for im in imgs]).astype(np.float32)
    np.testing.assert_allclose(f, np.asarray(ref(batch)), atol=1e-4)
    np.testing.assert_allclose(p, lite.predict_proba(imgs), atol=1e-6)
    assert p.shape == (7, 4) and f.shape == (7, 8)


def _fake_data_root(root: Path) -> list[tuple[str, str, str, str]]:
    """Generated cell images for a split manifest, and four BCCD-like annotated fields."""
    from PIL import Image

    rows = []
    for split, n, source in (("train", 40, "kaggle"), ("val", 40, "pbc"), ("test", 12, "kaggle"), ("test", 12, "pbc")):
        for k in range(n):
            rel = f"cells/{source}/{split}/{k:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(image_bytes(size=(48, 48), seed=hash((split, source, k)) % 10_000))
            rows.append((rel, CLASSES[k % 4], source, split))
    bccd = root / "blood-cells" / "dataset-master"
    (bccd / "Annotations").mkdir(parents=True)
    (bccd / "JPEGImages").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(150, 255, (240, 320, 3), dtype=np.uint8)).save(
            bccd / "JPEGImages" / f"BloodImage_{i:05d}.jpg"
        )
        objs = "".join(
            f"<object><name>{name}</name><bndbox><xmin>{x}</xmin><ymin>20</ymin>"
            f"<xmax>{x + 40}</xmax><ymax>60</ymax></bndbox></object>"
            for name, x in (("RBC", 10), ("Platelets", 80), ("WBC", 150))
        )
        (bccd / "Annotations" / f"BloodImage_{i:05d}.xml").write_text(f"<annotation>{objs}</annotation>")
    return rows


def _model_with_split(tmp_path: Path, name: str = "m") -> tuple[Path, Path]:
    """A tiny model with a split manifest of a generated data root: ``(model dir, data root)``."""
    root = tmp_path / "data"
    rows = _fake_data_root(root)
    d = make_tiny_model_dir(tmp_path / name)
    with open(d / persistence.MANIFEST_FILE, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["relpath", "label", "source", "split", "group", "sha256"])
        for rel, label, source, split in rows:
            w.writerow([rel, label, source, split, rel, ""])
    return d, root


def test_fit_trust_command_on_a_tiny_model_and_data_root(tmp_path, capsys):
    d, root = _model_with_split(tmp_path)
    assert main(["fit-trust", "--model", str(d), "--data", str(root), "--bank", "30", "--measure", "10"]) == 0
    out = capsys.readouterr().out
    assert "validation images unfamiliar" in out and "bccd_rbc" in out
    tm = unfamiliar.load(d, persistence.load_card(d).model_sha256)
    assert tm is not None and len(tm.bank) == 30 and tm.expected_share <= unfamiliar.MAX_UNFAMILIAR_SHARE
    assert tm.outlier_bank is not None and len(tm.outlier_bank) > 0  # even fields' crops + blurred/cut training images
    card = persistence.load_card(d)
    assert (
        card.training["trust"]["validation_images"] == 40
        and "Unfamiliar cells" in (d / persistence.CARD_MD).read_text()
    )
    assert set(tm.record["measured"]) >= {"kaggle_test", "pbc_test", "bccd_rbc", "background", "shift_restain_rapid"}
    assert Classifier.load(d).trust is not None
    assert tm.has_sources and set(tm.val_sources) <= {"kaggle", "pbc"} and len(tm.bank_sources) == 30
    assert tm.record["batch_rule"]["min_rank"] == MIN_RANK and tm.record["batch_rule"]["source_matched"] is True


def test_fit_trust_without_manifest_or_data_is_one_line(tmp_path, capsys):
    d = make_tiny_model_dir(tmp_path / "m")
    assert main(["fit-trust", "--model", str(d), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no split_manifest.csv") and len(err.strip().splitlines()) == 1


def test_review_sample_is_balanced_by_class_and_spans_the_confidence_range():
    cache, entries = batching.ResultCache(), []
    for k in range(30):
        sha = f"n{k:02d}"
        entries.append(batching.Entry(f"{sha}.png", sha, data=sha.encode()))
        cache.put((sha, "m"), _pred(f"{sha}.png", "neutrophil", 0.40 + 0.02 * k))
    for k in range(3):
        sha = f"l{k}"
        entries.append(batching.Entry(f"{sha}.png", sha, data=sha.encode()))
        cache.put((sha, "m"), _pred(f"{sha}.png", "lymphocyte", 0.9, unfamiliar_=k == 0))
    entries.append(batching.Entry("dup.png", "n00", data=b"n00"))  # the same image twice: sampled once
    entries.append(batching.Entry("bad.png", error="not an image"))
    sample = batching.review_sample(entries, cache, "m", CLASSES, per_class=5)
    files = [p.file for p, _ in sample]
    assert len(files) == len(set(files)) == 8 and sum(f.startswith("l") for f in files) == 3
    neutro = [p.confidence for p, _ in sample if p.predicted_class == "neutrophil"]
    assert len(neutro) == 5 and min(neutro) == pytest.approx(0.40) and max(neutro) == pytest.approx(0.98)
    assert all(data for _, data in sample)


def test_differential_by_version_compares_every_version_that_classified_the_whole_batch():
    cache, entries = batching.ResultCache(), []
    for k in range(4):
        sha = f"s{k}"
        entries.append(batching.Entry(f"{sha}.png", sha, data=b"x"))
        cache.put((sha, "parent@1"), _pred(f"{sha}.png", "neutrophil", 0.9, unfamiliar_=k == 0))
        cache.put((sha, "lab@2"), _pred(f"{sha}.png", "lymphocyte" if k < 2 else "neutrophil", 0.9))
    cache.put(("s0", "partial@3"), _pred("s0.png", "monocyte", 0.9))  # has not classified the whole batch
    d = batching.differential_by_version(entries, cache, CLASSES, 0.5)
    assert list(d["version"].unique()) == ["parent@1", "lab@2"]
    before = d[d["version"] == "parent@1"].set_index("class")
    after = d[d["version"] == "lab@2"].set_index("class")
    assert before.loc["neutrophil", "count"] == 3 and before["unidentified"].iloc[0] == 1  # unfamiliar left out
    assert after.loc["lymphocyte", "percent"] == 50.0 and after["unidentified"].iloc[0] == 0


def test_page_verdict_reads_the_scores_column_and_the_banner_says_why():
    ref = np.linspace(-2.0, 2.0, 400)
    trust = SimpleNamespace(expected_share=0.05, val_scores=ref)
    n = 30
    frame = pd.DataFrame({
        "error": [""] * n + ["unreadable"],
        "unfamiliar": ["False"] * (n + 1),  # as read back from a CSV
        "unfamiliarity": [f"{1.8 + 0.005 * k:.4f}" for k in range(n)] + [""],
    })
    shift = frame_shift(frame, trust)
    assert shift.n == n and shift.detected and shift.reason == "score_distribution" and shift.rank > 0.9
    text = banner_text(shift)
    assert "less familiar than" in text and "only 0 of 30" in text and "What to do" in text
    assert not frame_shift(frame, None).detected and np.isnan(frame_shift(frame, None).rank)
    calm = frame.assign(unfamiliarity=[f"{v:.4f}" for v in ref[::13][:n]] + [""])
    assert not frame_shift(calm, trust).detected


def test_page_verdict_is_source_matched_when_the_frame_has_near_sources():
    ref = np.r_[np.linspace(-2.0, 0.0, 300), np.linspace(0.0, 2.0, 300)]
    trust = SimpleNamespace(expected_share=0.05, val_scores=ref, val_sources=np.array(["low"] * 300 + ["high"] * 300))
    n = 40
    scores = [f"{-0.2 + 0.004 * k:.4f}" for k in range(n)]  # the top of "low"'s range: the pooled middle
    frame = pd.DataFrame({"error": [""] * n, "unfamiliar": [False] * n, "unfamiliarity": scores})
    assert not frame_shift(frame, trust).detected  # no near_source column: pooled, rank ~0.45
    shift = frame_shift(frame.assign(near_source=["low"] * n), trust)
    assert shift.detected and shift.rank_source == "low" and shift.rank > 0.9
    assert "most similar training laboratory" in banner_text(shift)


def test_a_source_part_that_fires_is_reported_before_a_larger_margin_that_does_not():
    rng = np.random.default_rng(4)
    ref = np.r_[rng.normal(0.0, 1.0, 1000), [0.0, 0.1]]  # source "x" has only two validation scores
    ref_src = np.array(["pbc"] * 1000 + ["x", "x"])
    pbc_part = rng.normal(0.85, 1.0, 60)  # mean rank ~0.72 against pbc (floor 0.65): fires
    x_part = np.full(20, 5.0)  # rank 1.0 against x (floor 0.90) but two reference scores: p ~0.01
    s = np.r_[pbc_part, x_part]
    src = ["pbc"] * 60 + ["x"] * 20
    r = domain_shift(s > 10, 0.05, scores=s, reference=ref, sources=src, reference_sources=ref_src)
    assert r.detected and r.rank_source == "pbc" and r.rank_threshold == 0.65
