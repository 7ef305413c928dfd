"""A trained network's inner outputs for dataset files: logits to calibrate, pooled features to adapt.

Training-time helpers (calibration in :mod:`hematovision.training.recipe`, the adaptation curve in
:mod:`hematovision.training.loso`), not the serving path: files are trusted dataset images, read
with :func:`~hematovision.imaging.decode.read_rgb` and framed as in serving, and decoded in
threads beside the forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..imaging.decode import read_rgb
from ..imaging.framing import model_input
from .network import LOGITS_LAYER


def predict_logits_keras(
    network, paths: Sequence[Path], input_size: int, framing: str, batch_size: int = 64, desc: str = "logits"
) -> np.ndarray:
    """Pre-softmax logits of a network for dataset files (training-time calibration)."""
    return layer_outputs_keras(network, paths, input_size, framing, LOGITS_LAYER, batch_size, desc)


def layer_outputs_keras(
    network,
    paths: Sequence[Path],
    input_size: int,
    framing: str,
    layer: str,
    batch_size: int = 64,
    desc: str = "features",
) -> np.ndarray:
    """One layer's outputs for trusted dataset files (float64), decoding in threads beside the forward pass."""
    import keras  # TensorFlow-class libraries load only when a network runs
    import tensorflow as tf

    sub = keras.Model(network.input, network.get_layer(layer).output)
    fn = tf.function(
        lambda x: sub(x, training=False), input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32)]
    )
    out = []
    with ThreadPoolExecutor(2) as pool:
        for b in tqdm(range(0, len(paths), batch_size), desc=desc, mininterval=5):
            imgs = list(pool.map(lambda p: model_input(read_rgb(p), input_size, framing), paths[b:b + batch_size]))
            out.append(np.asarray(fn(np.stack(imgs).astype(np.float32)), dtype=np.float64))
    return np.concatenate(out)
