"""Leave-one-class-out: ``train --exclude-classes`` drops a class from fitting and validation, keeps the view cache,
and ``fit-trust`` leaves the class out of the score's bank and validation (docs/trust.md)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_model_dir
from hematovision import cli
from hematovision.config import TRAINING_CLASSES
from hematovision.data.datasets import LabeledImage
from hematovision.modeling import persistence
from hematovision.training import recipe
from hematovision.training.recipe import SplitImages, TrainConfig, check_exclude_classes, view_cache_key
from hematovision.trust.fit import fitted_classes


def _images(split: str) -> list[LabeledImage]:
    return [LabeledImage(Path(f"/x/{s}/{c}/{split}{k}.png"), f"{s}/{c}/{split}{k}.png", c, s, split, f"{s}{c}{k}")
            for s in ("kaggle", "pbc") for c in TRAINING_CLASSES for k in range(2)]


def test_excluded_class_is_never_fitted_or_validated_on_and_the_caches_are_shared(monkeypatch, tmp_path):
    cfg = TrainConfig(views_per_image={"kaggle": 1, "pbc": 2}, exclude_classes=("monocyte",))
    base = TrainConfig(views_per_image={"kaggle": 1, "pbc": 2})
    assert view_cache_key(cfg) == view_cache_key(base) and recipe.clean_cache_key(cfg) == recipe.clean_cache_key(base)
    train, val = _images("train"), _images("val")
    split = SplitImages(train + val, train, val, [i for i in train if recipe.fits_on(i, cfg)],
                        [i for i in val if recipe.fits_on(i, cfg)])
    paths = []

    def fake_cache(bottom, items, path, cfg, **kw):  # a row per (image, view): which image it is, in the first column
        paths.append(path)
        return np.array([[(train + val).index(img), view] for img, view in items], np.float16)

    monkeypatch.setattr(recipe, "cache_features", fake_cache)
    data = recipe.cache_training_arrays(None, split, cfg, tmp_path)
    every = train + val
    fitted = {every[int(r)].label for r in data.x_train[:, 0]}
    validated = {every[int(r)].label for r in data.x_val[:, 0]}
    assert fitted == validated == set(TRAINING_CLASSES) - {"monocyte"}
    assert TRAINING_CLASSES.index("monocyte") not in set(data.y_train) | set(data.y_val)
    assert len(data.x_train) == 6 * 3 and len(data.view_index) == 12 and all(len(v) for v in data.view_index)
    # the same cache folders as a run with every class
    kept = list(paths)
    paths.clear()
    recipe.cache_training_arrays(None, replace(split, train=train, val=val), base, tmp_path)
    assert paths == kept


def test_exclude_classes_checked_and_fit_trust_leaves_them_out(tmp_path, capsys):
    assert check_exclude_classes(["eosinophil", " eosinophil", ""]) == ("eosinophil",)
    with pytest.raises(ValueError, match="unknown class basophil"):
        check_exclude_classes(["basophil"])
    with pytest.raises(ValueError, match="two classes"):
        check_exclude_classes(TRAINING_CLASSES[:3])
    assert cli.main(["train", "--out", str(tmp_path / "m"), "--exclude-classes", "basophil",
                     "--data", str(tmp_path)]) == 2
    assert "--exclude-classes: unknown class basophil" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    model = make_tiny_model_dir(tmp_path / "model")
    card = persistence.load_card(model)
    assert fitted_classes(card) == card.classes
    card.training["hyperparameters"] = {"exclude_classes": ["eosinophil"]}
    assert fitted_classes(card) == [c for c in card.classes if c != "eosinophil"]


def _cluster(centre: np.ndarray, n: int, rng) -> np.ndarray:
    return centre + 0.15 * rng.standard_normal((n, len(centre)))


def test_measure_reads_the_held_out_class_against_a_threshold_fitted_without_it(tmp_path):
    from hematovision.modeling import unfamiliar
    from hematovision.trust import loco

    rng = np.random.default_rng(0)
    centres = np.eye(16)[:4] * 3
    known = ["lymphocyte", "monocyte", "neutrophil"]
    bank = np.concatenate([_cluster(centres[k + 1], 60, rng) for k in range(3)])
    bank_labels = np.repeat(known, 60)
    labels = np.array(known * 40 + ["eosinophil"] * 40)
    feats = np.stack([_cluster(centres[TRAINING_CLASSES.index(c)], 1, rng)[0] for c in labels])
    probs = rng.dirichlet(np.ones(4) * 0.3, len(labels))
    outliers = _cluster(-centres[1], 30, rng)
    ind = labels != "eosinophil"
    tm = unfamiliar.fit(bank, feats[ind], probs[ind], outlier_features=outliers, dims=None)
    sources = np.array(["pbc", "kaggle"] * (len(labels) // 2))
    lf = loco.LocoFeatures(str(tmp_path), "m@1", ["eosinophil"], 0.5, labels, sources, labels, probs, feats,
                           np.log(probs), bank_labels)
    lf = loco.LocoFeatures.load(lf.save(tmp_path / "f.npz"))
    results = {r.variant: r for r in loco.measure(lf, tm)}
    served = results[loco.VARIANTS[0].name]
    assert served.served_check < 1e-5 and served.threshold == pytest.approx(tm.threshold)
    assert served.in_domain_unfamiliar.n == 120 and served.in_domain_unfamiliar.share <= 0.05
    for src in ("pbc", "kaggle"):  # the unseen cluster is far from the bank: all unfamiliar, whatever the confidence
        assert served.unfamiliar[("held_out", src)].share == 1.0 and served.flagged[("held_out", src)].n == 20
        assert results["mahalanobis"].unfamiliar[("held_out", src)].share == 1.0
    conf = results["confidence only"]  # random probabilities: confidence cannot tell the unseen class apart
    assert conf.unfamiliar[("held_out", "pbc")].share < 0.5
    assert "| served: knn k20 + 0.5 outlier | 100.0% (20/20;" in loco.table(lf, list(results.values()))


def test_budget_threshold_spends_the_flag_budget_with_low_confidence_counted_first():
    from hematovision.trust.loco import budget_threshold

    score = np.arange(10.0)
    low = np.zeros(10, bool)
    assert budget_threshold(score, low, 0.2) == 7.0  # 8 and 9 above it: 2 of 10
    low[[0, 1]] = True  # two already flagged by confidence: nothing left for the score
    assert budget_threshold(score, low, 0.2) == 9.0
    assert budget_threshold(score, low, 0.1) == float("inf")
    assert budget_threshold(score, low, 1.0) == float("-inf")
