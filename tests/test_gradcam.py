"""Grad-CAM: shape and normalisation, and a heat map that really peaks where the evidence is."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import build_tiny_network, image_bytes
from hematovision.serving import gradcam


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def darkness_network():
    """A network whose only feature is darkness: ``out_relu`` = ReLU(-mean preprocessed intensity).

    Light background (230 → +0.8) gives 0, a dark blob (≈ 90 → -0.3) gives ≈ 0.3. Class 0's logit
    grows with the pooled darkness, class 1's shrinks: so Grad-CAM for class 0 must light up the blob,
    and for class 1 nothing (negative weights, removed by the ReLU).
    """
    import keras

    inp = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(48, 48, name="resize")(inp)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
    x = keras.layers.Conv2D(1, 1, name="Conv1")(x)
    x = keras.layers.ReLU(name="out_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(2, name="logits")(x)
    net = keras.Model(inp, keras.layers.Softmax(name="probabilities")(logits))
    net.get_layer("Conv1").set_weights([np.full((1, 1, 3, 1), -1 / 3, np.float32), np.zeros(1, np.float32)])
    net.get_layer("logits").set_weights([np.array([[10.0, -10.0]], np.float32), np.zeros(2, np.float32)])
    return net


def _blob_image(h=60, w=90, cy=15, cx=70, r=8) -> np.ndarray:
    img = np.full((h, w, 3), 230, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (90, 40, 140)
    return img


def test_heat_map_peaks_on_the_dark_blob(darkness_network):
    img = _blob_image()  # not square, blob off-centre (top right): a transposed or flipped map would miss it
    cam = gradcam.GradCam(darkness_network)(img)
    assert cam.class_index == 0 and cam.heat.shape == (60, 90)
    peak = np.unravel_index(np.argmax(cam.heat), cam.heat.shape)
    assert (peak[0] - 15) ** 2 + (peak[1] - 70) ** 2 < 8 ** 2, peak
    yy, xx = np.mgrid[:60, :90]
    far = (yy - 15) ** 2 + (xx - 70) ** 2 > 14 ** 2
    assert cam.heat.max() == pytest.approx(1.0) and cam.heat[far].max() < 0.05  # background stays cold

    # the other class's evidence is the absence of darkness: after the ReLU nothing is left, and no NaN
    other = gradcam.GradCam(darkness_network)(img, class_index=1)
    assert other.class_index == 1 and np.isfinite(other.heat).all() and other.heat.max() == 0.0


def test_shape_and_normalisation_on_the_tiny_model():
    net = build_tiny_network(32)
    cam = gradcam.GradCam(net, 32)
    for seed, size in ((1, (64, 48)), (2, (33, 100))):
        img = _rgb(image_bytes("PNG", size=size, seed=seed))
        hm = cam(img)
        assert hm.heat.shape == img.shape[:2] and hm.heat.dtype == np.float32
        assert hm.heat.min() >= 0.0 and hm.heat.max() <= 1.0 and np.isfinite(hm.heat).all()
        assert hm.heat.max() in (0.0, pytest.approx(1.0))
        probs = net.predict(img[None].astype(np.float32), verbose=0)[0]
        assert hm.class_index == int(np.argmax(probs))  # explains the predicted class (temperature keeps the order)


def test_overlay_is_an_rgb_image_of_the_same_size():
    img = _blob_image()
    heat = np.zeros((10, 15), np.float32)
    heat[2, 12] = 1.0
    out = gradcam.overlay(img, heat)
    assert out.shape == img.shape and out.dtype == np.uint8
    cold, hot = out[55, 5].astype(int), out[12, 75].astype(int)
    assert cold[2] > cold[0]  # JET low = blue
    assert hot[0] > hot[2]  # JET high = red


def test_for_classifier_uses_the_network_that_predicted(tiny_model_dir):
    from hematovision.serving.classifier import Classifier

    clf = Classifier.load(tiny_model_dir, backend="keras")
    img = _rgb(image_bytes("PNG", seed=5))
    hm = gradcam.for_classifier(clf)(img)
    assert clf.classes_[hm.class_index] == clf.predict([img])[0]


def test_cell_framed_models_explain_the_framed_cell():
    """For a ``cell`` model the map lies over the square the network saw, and explains its prediction."""
    from test_framing import smear

    from hematovision.imaging.framing import frame_cell

    net = build_tiny_network(32)
    field = smear()
    hm = gradcam.GradCam(net, 32, framing="cell")(field)
    np.testing.assert_array_equal(hm.image, frame_cell(field, 32))
    assert hm.heat.shape == (32, 32) and gradcam.overlay(hm.image, hm.heat).shape == (32, 32, 3)
    assert hm.class_index == int(np.argmax(net.predict(frame_cell(field, 32)[None].astype(np.float32), verbose=0)[0]))
