"""The network's contract: layer names, and the optional colour standardisation inside it."""

import numpy as np
import pytest

from hematovision.model import LAST_CONV_LAYER, LOGITS_LAYER, TEMPERATURE_LAYER, build_network


@pytest.fixture(scope="module")
def normed():
    return build_network(32, 4, input_norm="channel")


def test_contract_layers_exist(normed):
    names = {layer.name for layer in normed.layers}
    assert {"resize", "channel_standardise", "preprocess", LAST_CONV_LAYER, LOGITS_LAYER, TEMPERATURE_LAYER} <= names
    with pytest.raises(ValueError):
        build_network(32, 4, input_norm="lab")


def test_channel_standardisation_undoes_a_per_channel_colour_shift(normed):
    rng = np.random.default_rng(0)
    x = rng.uniform(60, 200, (2, 32, 32, 3)).astype(np.float32)
    shifted = x * np.array([0.8, 1.1, 0.9], np.float32) + np.array([20.0, -15.0, 10.0], np.float32)  # another stain / white balance
    a, b = normed.predict(x, verbose=0), normed.predict(shifted, verbose=0)
    assert np.max(np.abs(a - b)) < 1e-3
    layer = normed.get_layer("channel_standardise")
    out = np.asarray(layer(x))
    assert np.allclose(out.mean(axis=(1, 2)), 128, atol=0.5) and np.allclose(out.std(axis=(1, 2)), 48, atol=2.0)  # std / (std + 1): within 2
