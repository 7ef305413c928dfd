"""A tiny real training run: resumable cache, fine-tune, calibration, export, evaluation."""

import json

import pytest

from hematovision.imaging.framing import FRAMING_REVISION
from hematovision.modeling import persistence
from hematovision.serving.classifier import Classifier
from hematovision.training.recipe import TrainConfig, train_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def refit_run(tmp_path_factory, data_root):
    """One tiny ``train --refit`` shared by the tests below (an early-stopped selection run, then its refit):
    training is the slowest thing the suite does."""
    from hematovision.config import weights_path

    if not weights_path(data_root).exists():
        pytest.skip("ImageNet weights not found beside the data root")
    cfg = TrainConfig(
        input_size=48,
        limit_per_split=2,
        head_epochs=1,
        max_epochs=2,
        patience=5,
        views_per_image={"kaggle": 1, "pbc": 1},
        batch_size=8,
    )
    tmp = tmp_path_factory.mktemp("refit")
    cache, work = tmp / "cache", tmp / "work"
    out = train_command(tmp / "refit", work, cfg, data_root, evaluate=False, cache_root=cache, refit=True)
    return cfg, cache, work, out


def test_train_command_end_to_end_and_resume(refit_run, data_root):
    from hematovision.training.recipe import fit

    cfg, cache, work, out = refit_run
    selected = work / "selection-model"
    for run in (work / "selection", work / "refit"):
        assert json.loads((run / "state.json").read_text())["phase"] == "done"
    for model_dir in (selected, out):
        card = persistence.load_card(model_dir)
        assert card.input_size == 48 and card.temperature > 0 and card.training["history"]
        assert (
            card.framing == "cell" and card.framing_revision == FRAMING_REVISION and "nucleus" in card.preprocessing
        )  # the recipe's framing, recorded for serving
    clf = Classifier.load(out)
    assert clf.classes_ == ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    # Fitting again in the same working directory resumes: no feature is recomputed, no epoch rerun.
    cached = sorted(p.stat().st_mtime for p in cache.rglob("*.npy"))
    history = json.loads((work / "selection" / "state.json").read_text())["history"]
    fitted = fit(work / "selection", cfg, data_root, cache_root=cache)
    assert sorted(p.stat().st_mtime for p in cache.rglob("*.npy")) == cached
    assert fitted.state.history == history


def test_refit_trains_on_validation_too_and_borrows_the_calibration(refit_run):
    """A refit adds the validation images to training for the epochs the early-stopped run kept,
    and ships with that run's temperature and threshold; another recipe is refused."""
    from dataclasses import replace

    from hematovision.training.recipe import refit_config

    cfg, cache, work, refit = refit_run
    selected = work / "selection-model"
    sel = persistence.load_card(selected)
    kept = (
        1 + min((h for h in sel.training["history"] if h["phase"] == "finetune"), key=lambda h: h["val_loss"])["epoch"]
    )
    card = persistence.load_card(refit)
    assert (
        card.training["selection_run"]["version"] == sel.version
        and card.training["selection_run"]["history"] == sel.training["history"]
    )
    ft = [h for h in card.training["history"] if h["phase"] == "finetune"]
    assert card.training["hyperparameters"]["refit_finetune_epochs"] == kept == len(ft)
    assert card.temperature == sel.temperature and card.default_threshold == sel.default_threshold
    assert sel.version in card.training["validation_metrics"]["from"]
    assert card.training["fitted_on"].startswith("train and val") and sel.training["fitted_on"].startswith(
        "train split"
    )
    assert "Fitted on: train and val" in (refit / "MODEL_CARD.md").read_text()
    assert card.model_sha256 != sel.model_sha256
    assert (
        len(list(cache.glob("views-*/train-*"))) == 2
    )  # augmented views of the train list, then of the validation list
    assert all(h["val_loss"] is None for h in ft)  # no held-out score for images it trains on
    with pytest.raises(ValueError, match="input_size"):
        refit_config(selected, replace(cfg, input_size=64))


def test_deep_phase_trains_the_lower_blocks_and_keeps_batchnorm(refit_run, data_root, tmp_path):
    """``train --deep-from``: every layer but BatchNorm moves (the first convolution too), BatchNorm keeps its
    statistics, the run records its epochs, and the exported model is the epoch of the best validation loss (the
    consistency term's own training step is run by the resume test below)."""
    import numpy as np

    from hematovision.training.deep import DeepConfig, deep_fit

    cfg, cache, work, parent = refit_run
    deep = DeepConfig(init_from=str(parent), max_epochs=1, batch_size=8, kaggle_per_epoch=4, lr=1e-3)
    out = train_command(tmp_path / "deep", tmp_path / "work", cfg, data_root, evaluate=False,
                        fitter=lambda w, c, r, cache_root=None: deep_fit(w, c, r, deep=deep))
    before = persistence.load_keras_model(parent)
    last = persistence.load_keras_model(parent)
    last.load_weights(str(tmp_path / "work" / "checkpoint.weights.h5"))  # the weights after the last epoch
    assert not np.allclose(before.get_layer("Conv1").get_weights()[0], last.get_layer("Conv1").get_weights()[0])
    for a, b in zip(before.get_layer("bn_Conv1").get_weights(), last.get_layer("bn_Conv1").get_weights()):
        np.testing.assert_array_equal(a, b)
    history = persistence.load_card(out).training["history"]
    assert [h["epoch"] for h in history] == [-1, 0] and {h["phase"] for h in history} == {"deep"}
    shipped = persistence.load_keras_model(out)
    best = min(history, key=lambda h: h["val_loss"])["epoch"]
    kept = (before if best == -1 else last).get_layer("Conv1").get_weights()[0]
    np.testing.assert_array_equal(shipped.get_layer("Conv1").get_weights()[0], kept)
    assert Classifier.load(out).classes_ == ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def test_deep_epochs_show_every_pbc_image_and_a_new_kaggle_draw():
    from hematovision.data.datasets import LabeledImage
    from hematovision.training.deep import epoch_images

    train = [LabeledImage(path=None, label="monocyte", source=s, split="train", relpath=f"{s}/{k}", group=f"{s}{k}")
             for s, n in (("kaggle", 30), ("pbc", 10)) for k in range(n)]
    e0, e0_again, e1 = (epoch_images(train, e, 5, seed=1) for e in (0, 0, 1))
    assert e0 == e0_again
    for e in (e0, e1):
        assert sum(i.source == "pbc" for i in e) == 10 and sum(i.source == "kaggle" for i in e) == 5
    assert {i.relpath for i in e0 if i.source == "kaggle"} != {i.relpath for i in e1 if i.source == "kaggle"}
    assert len(epoch_images(train, 0, 0, seed=1)) == 40


def test_js_divergence_is_zero_for_agreement_and_ln2_for_disjoint_answers():
    import numpy as np

    from hematovision.training.deep import js_divergence

    p = np.array([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]], np.float32)
    q = np.array([[0, 1.0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.1, 0.7, 0.1, 0.1]], np.float32)
    js, js_back = np.asarray(js_divergence(p, q)), np.asarray(js_divergence(q, p))
    np.testing.assert_allclose(js, js_back, rtol=1e-6)
    np.testing.assert_allclose(js[:2], [np.log(2), 0.0], atol=1e-5)
    m = (p[2] + q[2]) / 2
    expect = 0.5 * np.sum(p[2] * np.log(p[2] / m)) + 0.5 * np.sum(q[2] * np.log(q[2] / m))
    np.testing.assert_allclose(js[2], expect, rtol=1e-5)


def test_deep_selection_loss_averages_clean_and_recipe_views():
    import numpy as np

    from hematovision.training.deep import _selection_scores

    class Stub:  # logits that depend on the input: right on the clean images, wrong on their "views"
        def predict(self, x, batch_size=None, verbose=0):
            return np.where(x[:, :1] > 0, 4.0, -4.0) * np.eye(2)[[0, 1, 0, 1]] + np.where(
                x[:, :1] > 0, -4.0, 4.0) * np.eye(2)[[1, 0, 1, 0]]

    y, w, src = np.array([0, 1, 0, 1]), np.ones(4), ["pbc", "pbc", "kaggle", "kaggle"]
    clean, views = np.ones((4, 1)), -np.ones((4, 1))
    alone = _selection_scores(Stub(), clean, None, y, w, src, 0.0)
    assert alone["select_loss"] == alone["val_loss"] and alone["val_acc"] == 1.0 and alone["val_acc_kaggle"] == 1.0
    both = _selection_scores(Stub(), clean, views, y, w, src, 0.0)
    assert both["aug_val_acc"] == 0.0 and both["aug_val_loss"] > both["val_loss"]
    assert both["select_loss"] == (both["val_loss"] + both["aug_val_loss"]) / 2


def test_interrupted_deep_run_resumes_its_learning_rate_schedule(refit_run, data_root, tmp_path, monkeypatch):
    """A deep run stopped after its first epoch resumes at that epoch, with the optimizer's step count (and so the
    cosine schedule) where it stopped rather than back at the warm-up. Run with the consistency term: two colour
    views an image, in its own training step."""
    from hematovision.training import deep as deep_module
    from hematovision.training.deep import DeepConfig, deep_fit
    from hematovision.training.recipe import RunFiles

    class Stopped(Exception):
        pass

    class StopAfterFirstEpoch(RunFiles):
        def save(self, net, state):
            super().save(net, state)
            if state.epoch == 1:
                raise Stopped

    cfg, cache, work, parent = refit_run
    deep = DeepConfig(init_from=str(parent), max_epochs=2, patience=5, batch_size=4, kaggle_per_epoch=2, lr=1e-4,
                      consistency=12.0)
    monkeypatch.setattr(deep_module, "RunFiles", StopAfterFirstEpoch)
    with pytest.raises(Stopped):
        deep_fit(tmp_path / "work", cfg, data_root, deep=deep)
    monkeypatch.undo()
    history = deep_fit(tmp_path / "work", cfg, data_root, deep=deep).state.history
    assert [h["epoch"] for h in history] == [-1, 0, 1]
    steps = {h["epoch"]: h["step"] for h in history if h["epoch"] >= 0}
    assert steps[0] > 0 and steps[1] == 2 * steps[0]
    assert all(h["loss"] > 0 for h in history[1:])


def test_view_counts_that_would_reach_another_kind_of_view_are_refused():
    from hematovision.training.deep import DeepConfig

    with pytest.raises(ValueError, match="recipe views"):
        TrainConfig(views_per_image={"kaggle": 2, "pbc": 60}, extra_views={"pbc": 41})
    with pytest.raises(ValueError, match="mild views"):
        TrainConfig(mild_views={"pbc": 901})
    TrainConfig(views_per_image={"kaggle": 2, "pbc": 60}, extra_views={"pbc": 40}, mild_views={"pbc": 900})
    with pytest.raises(ValueError, match="max_epochs"):
        DeepConfig(init_from="x", max_epochs=50_000)
    # the CLI sets the counts on a made config: caching the views checks them again, before any view is drawn
    from hematovision.training.recipe import cache_training_arrays

    cfg = TrainConfig()
    cfg.extra_views = {"pbc": 99}
    with pytest.raises(ValueError, match="recipe views"):
        cache_training_arrays(None, None, cfg, None)
