"""Adaptation to a lab: the head fit, its calibration, saving as a new version, and the CLI."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from conftest import CLASSES, make_tiny_model_dir
from hematovision.cli import main
from hematovision.imaging.framing import FRAMING_REVISION
from hematovision.modeling import persistence, versions
from hematovision.training.adapt import AdaptConfig, adapt_head, adapt_model, fit_head


def _blobs(n: int, seed: int = 0, size: int = 40):
    """Per class a distinct colour of blob on a light field: separable, as a lab's own cells would be."""
    colours = {
        "eosinophil": (200, 60, 60),
        "lymphocyte": (40, 40, 160),
        "monocyte": (40, 150, 40),
        "neutrophil": (120, 40, 140),
    }
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in CLASSES:
        for _ in range(n):
            img = np.full((size, size, 3), 225, np.uint8)
            yy, xx = np.mgrid[:size, :size]
            cy, cx = rng.integers(12, size - 12, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = colours[c]
            images.append(img)
            labels.append(c)
    return images, labels


def test_fit_head_learns_separable_features_and_l2sp_holds_the_base():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    x = rng.normal(size=(120, 16)) + np.eye(4, 16)[y] * 4
    w0, b0 = np.zeros((16, 4)), np.zeros(4)
    w, b = fit_head(x, y, w0, b0, AdaptConfig(steps=200, l2sp=0.0))
    assert ((x @ w + b).argmax(1) == y).mean() == 1.0
    w_held, _ = fit_head(x, y, w0, b0, AdaptConfig(steps=200, l2sp=1e3))
    assert np.abs(w_held).max() < np.abs(w).max() / 10


def test_adapt_head_is_deterministic_and_calibrated_on_crossfitted_logits():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 10)
    feats = (rng.normal(size=(40, 3, 8)) + np.eye(4, 8)[y][:, None, :] * 2)
    w0, b0 = np.zeros((8, 4)), np.zeros(4)
    a = adapt_head(feats, y, w0, b0, CLASSES, AdaptConfig(steps=100))
    b = adapt_head(feats, y, w0, b0, CLASSES, AdaptConfig(steps=100))
    assert np.array_equal(a.weights, b.weights) and a.temperature == b.temperature
    assert a.temperature > 0 and 0.5 < a.crossfit_accuracy <= 1.0
    assert a.counts == dict.fromkeys(CLASSES, 10) and 0 <= a.threshold.threshold <= 1


def test_perfectly_separated_labels_do_not_calibrate_to_certainty():
    """80 labels, every cross-fitted prediction right by a wide margin (a lab's clean cells on a strong model):
    the temperature must not collapse to its floor and the threshold must accept, not flag everything."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 20)
    feats = rng.normal(size=(80, 3, 8)) + np.eye(4, 8)[y][:, None, :] * 12
    w0 = np.eye(8, 4) * 2.0  # a parent head that already separates them, as a trained model's would
    res = adapt_head(feats, y, w0, np.zeros(4), CLASSES, AdaptConfig(steps=100))
    assert res.crossfit_accuracy == 1.0
    assert res.temperature > 0.2 and res.threshold.threshold < 0.999 and res.threshold.coverage == 1.0


def test_adapt_model_saves_a_new_version_and_never_touches_the_parent(tmp_path):
    base = make_tiny_model_dir(tmp_path / "base")
    before = (base / "model.keras").read_bytes()
    images, labels = _blobs(6)
    out = adapt_model(base, images, labels, tmp_path / "lab-a", "lab-a", AdaptConfig(views=2, steps=150), litert=False)
    card = persistence.load_card(out)
    parent = persistence.load_card(base)
    assert card.parent == parent.version and card.version != parent.version and card.name == "lab-a"
    assert card.training["adaptation"]["labeled_counts"] == dict.fromkeys(CLASSES, 6)
    assert (base / "model.keras").read_bytes() == before
    from hematovision.serving.classifier import Classifier

    clf = Classifier.load(out, backend="keras")
    probs = clf.predict_proba(images)
    assert probs.shape == (24, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (
        probs.argmax(1) == np.array([CLASSES.index(c) for c in labels])
    ).mean() >= 0.9  # it learned the lab's classes
    with pytest.raises(FileExistsError):
        adapt_model(base, images, labels, out, "lab-a", AdaptConfig(views=1, steps=10), litert=False)
    with pytest.raises(ValueError, match="not classes"):
        adapt_model(base, images, ["basophil"] * len(images), tmp_path / "x", "x", litert=False)
    with pytest.raises(ValueError, match="too few for: monocyte"):
        adapt_model(base, images[:13], labels[:13], tmp_path / "y", "y", litert=False)


def test_versions_list_shipped_first_then_adapted_and_skip_partial(tmp_path):
    home = tmp_path / "home"
    shipped = make_tiny_model_dir(tmp_path / "shipped")
    images, labels = _blobs(3)
    adapt_model(
        shipped,
        images,
        labels,
        versions.new_version_dir("lab-b", home),
        "lab-b",
        AdaptConfig(views=1, steps=20, folds=3),
        litert=False,
    )
    (versions.adapted_root(home) / "half.partial").mkdir()
    found = versions.list_versions(shipped, home)
    assert [v.shipped for v in found] == [True, False]
    assert found[1].name == "lab-b" and found[1].parent == found[0].version and "adapted from" in found[1].label
    with pytest.raises(FileExistsError):
        versions.new_version_dir("lab-b", home)
    for bad in ("../evil", "", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            versions.check_name(bad)


def test_cli_adapt_from_a_zip_with_a_broken_member(tmp_path, capsys):
    base = make_tiny_model_dir(tmp_path / "base")
    images, labels = _blobs(3)
    buf = io.BytesIO()
    import cv2

    with zipfile.ZipFile(buf, "w") as zf:
        for k, (img, lbl) in enumerate(zip(images, labels)):
            zf.writestr(f"lab/{lbl}/{k}.png", cv2.imencode(".png", img[..., ::-1])[1].tobytes())
        zf.writestr("lab/monocyte/broken.png", b"\x89PNG\r\n\x1a\nnot really")
    z = tmp_path / "labeled.zip"
    z.write_bytes(buf.getvalue())
    rc = main(["adapt", str(z), "--name", "lab-c", "--model", str(base), "--views", "2", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "broken.png" in err and "adapted from tiny-test-model@" in out
    assert persistence.load_card(versions.adapted_root() / "lab-c").parent.startswith("tiny-test-model@")
    assert main(["adapt", str(z), "--name", "lab-c", "--model", str(base), "--quiet"]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
    assert main(["adapt", str(z), "--name", "../x", "--model", str(base), "--quiet"]) == 2


def test_adapt_from_review_decisions_uses_confirmed_and_reclassified_images_only(tmp_path, capsys):
    from hematovision.review.store import UNUSABLE, ReviewStore, thumbnail_png
    from hematovision.serving.classifier import Prediction

    base = make_tiny_model_dir(tmp_path / "base")
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    images, labels = _blobs(3)
    preds, thumbs = [], {}
    for k, img in enumerate(images):
        sha = f"{k:064x}"
        preds.append(Prediction(f"cell{k}.png", "neutrophil", 0.5, (0.1, 0.1, 0.3, 0.5), True, "", sha))
        thumbs[sha] = thumbnail_png(img)
    store.queue(preds, CLASSES, "tiny@1", thumbs)
    for p, lbl in zip(preds, labels):
        store.decide(p.sha256, "tiny@1", lbl, "tester")  # confirms the neutrophils, reclassifies the rest
    store.decide(preds[0].sha256, "tiny@1", UNUSABLE, "tester")  # the latest decision wins: left out
    from hematovision.training.adapt import labeled_from_reviews

    labeled = labeled_from_reviews(store, CLASSES)
    assert len(labeled.inputs) == 11 and labeled.labels.count("eosinophil") == 2
    rc = main(
        [
            "adapt",
            "--from-reviews",
            "--review-db",
            str(store.path),
            "--name",
            "from-reviews",
            "--model",
            str(base),
            "--views",
            "1",
            "--quiet",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "on 11 images" in out
    assert ("flags every prediction" in err) == (
        persistence.load_card(versions.adapted_root() / "from-reviews").default_threshold >= 0.999
    )
    assert main(["adapt", "--name", "nothing", "--model", str(base)]) == 2  # neither PATH nor --from-reviews


def test_an_adapted_version_keeps_its_parents_framing(tmp_path):
    """A ``cell`` parent's child frames cells too, and its features are those of the framed views."""
    from hematovision.imaging.framing import frame_cell
    from hematovision.training.adapt import feature_model, pooled_features

    base = make_tiny_model_dir(tmp_path / "base")
    persistence.update_card(base, lambda c: c.__dict__.update(framing="cell", framing_revision=FRAMING_REVISION))
    images, labels = _blobs(6)
    out = adapt_model(base, images, labels, tmp_path / "lab-c", "lab-c", AdaptConfig(views=2, steps=50), litert=False)
    assert persistence.load_card(out).framing == "cell"
    net = persistence.load_keras_model(base, persistence.load_card(base))
    feats = pooled_features(feature_model(net), images[:3], 32, 2, AdaptConfig().augment, 0, framing="cell")
    clean = feature_model(net).predict(
        np.stack([frame_cell(im, 32) for im in images[:3]]).astype(np.float32), verbose=0
    )
    assert feats.shape[:2] == (3, 2)
    np.testing.assert_allclose(feats[:, 0], clean, atol=1e-5)  # view 0 is the clean, framed image


def _tiny_bn_model_dir(path, input_size: int = 32):
    """A tiny network with BatchNorm and the layer names adaptation fine-tunes (``block_14_add`` where the
    cached activations are taken, ``block_16_*``, ``Conv_1``), saved as a model directory."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(input_size, input_size, name="resize")(inp)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="Conv1")(x)
    x = keras.layers.BatchNormalization(name="bn_Conv1")(x)
    x = keras.layers.ReLU(name="block_14_add")(x)
    x = keras.layers.Conv2D(8, 1, name="block_16_project")(x)
    x = keras.layers.BatchNormalization(name="block_16_project_BN")(x)
    x = keras.layers.Conv2D(16, 1, name="Conv_1")(x)
    x = keras.layers.ReLU(name="out_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(len(CLASSES), name="logits")(x)
    x = keras.layers.Rescaling(1.0 / 1.5, name="temperature")(x)
    net = keras.Model(inp, keras.layers.Softmax(name="probabilities")(x), name="tiny_bn")
    card = persistence.ModelCard(name="tiny-bn", classes=list(CLASSES), input_size=input_size, temperature=1.5,
                                 default_threshold=0.3)
    persistence.save_model(net, card, path)
    return path


def test_batchnorm_statistics_are_re_estimated_on_the_labs_images_layer_after_layer(tmp_path):
    import keras

    from hematovision.training.adapt import restat_batchnorm

    base = _tiny_bn_model_dir(tmp_path / "bn")
    net = persistence.load_keras_model(base, persistence.load_card(base))
    before = net.get_layer("bn_Conv1").get_weights()
    images, _ = _blobs(5)
    x = np.stack(images).astype(np.float32)
    lab = restat_batchnorm(net, list(x), batch_size=7)  # uneven batches: the estimate weighs images, not batches
    # the first BatchNorm exactly; a deeper one was estimated with the layers below on batch statistics, so
    # it matches what it sees at inference closely (and not the parent's statistics)
    for name, below, tol in (("bn_Conv1", "Conv1", 1e-4), ("block_16_project_BN", "block_16_project", 0.05)):
        inputs = keras.Model(lab.input, lab.get_layer(below).output).predict(x, verbose=0)
        mean, var = lab.get_layer(name).moving_mean.numpy(), lab.get_layer(name).moving_variance.numpy()
        np.testing.assert_allclose(mean, inputs.mean(axis=(0, 1, 2)), atol=tol)
        np.testing.assert_allclose(var, inputs.var(axis=(0, 1, 2)), rtol=0.05, atol=tol)
        assert not np.allclose(mean, net.get_layer(name).moving_mean.numpy(), atol=tol)
    for a, b in zip(before, net.get_layer("bn_Conv1").get_weights()):
        np.testing.assert_array_equal(a, b)  # the parent is not changed
    assert not lab.get_layer("bn_Conv1").trainable


def test_fine_tuning_moves_the_top_convolutions_only_and_l2sp_holds_them(tmp_path):
    from hematovision.training.adapt import activation_model, clone_network, fine_tune_top, top_model

    base = _tiny_bn_model_dir(tmp_path / "bn")
    net = persistence.load_keras_model(base, persistence.load_card(base))
    images, labels = _blobs(4)
    acts = activation_model(net).predict(np.stack(images).astype(np.float32), verbose=0)
    y = np.array([CLASSES.index(c) for c in labels])
    moved = {}
    for l2sp in (0.0, 1e4):
        work = clone_network(net)
        fine_tune_top(top_model(work), acts, y, AdaptConfig(finetune_from=16, ft_epochs=20, ft_lr=1e-2,
                                                            ft_l2sp=l2sp, ft_batch=8))
        for same in ("Conv1", "bn_Conv1", "block_16_project_BN"):  # below the top, and BatchNorm statistics
            for a, b in zip(net.get_layer(same).get_weights(), work.get_layer(same).get_weights()):
                np.testing.assert_array_equal(a, b)
        moved[l2sp] = np.abs(work.get_layer("Conv_1").get_weights()[0] - net.get_layer("Conv_1").get_weights()[0])
    assert moved[0.0].max() > 1e-3
    assert moved[1e4].max() < moved[0.0].max() / 5
    with pytest.raises(ValueError, match="finetune_from"):
        fine_tune_top(top_model(clone_network(net)), acts, y, AdaptConfig(finetune_from=3))


def test_adapting_with_lab_batchnorm_and_fine_tuning_records_it_and_exports_to_litert(tmp_path):
    from hematovision.serving.classifier import Classifier

    base = _tiny_bn_model_dir(tmp_path / "bn")
    images, labels = _blobs(6)
    cfg = AdaptConfig(views=2, steps=100, batchnorm="lab", finetune_from=16, ft_epochs=2)
    out = adapt_model(base, images, labels, tmp_path / "lab-d", "lab-d", cfg, unlabeled=images[:4])
    card = persistence.load_card(out)
    method = card.training["adaptation"]["method"]
    assert "BatchNorm statistics re-estimated" in method and "4 unlabeled" in method and "blocks 16-16" in method
    assert card.training["adaptation"]["config"]["finetune_from"] == 16
    lite, keras_clf = Classifier.load(out), Classifier.load(out, backend="keras")
    assert lite.backend == "litert"
    np.testing.assert_allclose(lite.predict_proba(images[:5]), keras_clf.predict_proba(images[:5]), atol=1e-4)
    parent = persistence.load_keras_model(base, persistence.load_card(base))
    child = persistence.load_keras_model(out, card)
    assert not np.allclose(parent.get_layer("bn_Conv1").moving_mean.numpy(), child.get_layer("bn_Conv1").moving_mean)
    assert not np.allclose(parent.get_layer("Conv_1").get_weights()[0], child.get_layer("Conv_1").get_weights()[0])
