"""Grad-CAM: where in the image the model looked for the class it predicted.

Standard Grad-CAM (Selvaraju et al., 2017) on the last convolution (``out_relu``)
with respect to the predicted class's logit (the ``logits`` layer, before the
temperature, which would only rescale it): weight each feature map by its mean
gradient, sum, ReLU, normalise to [0, 1], resize to the image. The heat map is
shown over the image with OpenCV's JET colormap.

It needs the Keras network (TensorFlow) even when serving runs on LiteRT, so it is
built only when a heat map is asked for (``Classifier.network`` loads lazily).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..imaging.framing import model_input
from ..modeling.network import LAST_CONV_LAYER, LOGITS_LAYER


@dataclass(frozen=True)
class HeatMap:
    """A Grad-CAM map over ``image``, in [0, 1]; ``class_index`` is the class it explains."""

    heat: np.ndarray  # float32 [h, w] of ``image``
    class_index: int
    logits: np.ndarray  # the network's logits for the image (before temperature)
    image: np.ndarray  # what the map lies over: the image itself, or the cell square the network saw (framing "cell")


class GradCam:
    """Grad-CAM for one Keras network with ``out_relu`` and ``logits`` layers; build once, call per image."""

    def __init__(
        self,
        network,
        input_size: int | None = None,
        conv_layer: str = LAST_CONV_LAYER,
        logits_layer: str = LOGITS_LAYER,
        framing: str = "full",
    ):
        import keras  # TensorFlow-class library: imported only when a network is used

        self.input_size = input_size
        self.framing = framing
        self._model = keras.Model(
            network.inputs, [network.get_layer(conv_layer).output, network.get_layer(logits_layer).output]
        )

    def __call__(self, rgb: np.ndarray, class_index: int | None = None) -> HeatMap:
        """The heat map for an RGB uint8 image; ``class_index`` defaults to the predicted class."""
        import tensorflow as tf  # TensorFlow-class library: imported only when a network is used

        rgb = np.asarray(rgb)
        x = model_input(rgb, self.input_size, self.framing) if self.input_size else rgb
        if self.framing != "full" and self.input_size:
            rgb = x  # the map explains the framed cell, so it is drawn over that
        h, w = rgb.shape[:2]
        x = tf.convert_to_tensor(x[None].astype(np.float32))
        with tf.GradientTape() as tape:
            conv, logits = self._model(x, training=False)
            k = int(tf.argmax(logits[0])) if class_index is None else int(class_index)
            score = logits[:, k]
        grads = tape.gradient(score, conv)[0].numpy()  # [hc, wc, c]
        maps = conv[0].numpy()
        cam = np.maximum((maps * grads.mean(axis=(0, 1))).sum(axis=-1), 0.0)
        return HeatMap(_normalise_resize(cam, h, w), k, np.asarray(logits[0], dtype=np.float64), rgb)


def _normalise_resize(cam: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize to ``(h, w)``, then scale to [0, 1] (so the peak is exactly 1; all zeros when nothing
    in the image pushes towards the class)."""
    out = cv2.resize(np.asarray(cam, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    top = float(out.max()) if out.size else 0.0
    if not (top > 0 and np.isfinite(top)):
        return np.zeros((h, w), np.float32)
    return np.clip(out / top, 0.0, 1.0).astype(np.float32)


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with the heat map blended on top (JET: blue = low, red = high), RGB uint8."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    if heat.shape != rgb.shape[:2]:
        heat = cv2.resize(heat.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1.0 - alpha, colour, alpha, 0.0)


def for_classifier(clf) -> GradCam:
    """Grad-CAM for the network that made ``clf``'s predictions (Keras, loaded on first use under LiteRT)."""
    return GradCam(clf.network, clf.input_size, framing=clf.framing)
