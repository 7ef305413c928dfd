"""The network's contract: layer names, and the optional colour standardisation inside it."""

import numpy as np
import pytest

from hematovision.modeling.network import LAST_CONV_LAYER, LOGITS_LAYER, TEMPERATURE_LAYER, build_network


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
    shifted = x * np.array([0.8, 1.1, 0.9], np.float32) + np.array(
        [20.0, -15.0, 10.0], np.float32
    )  # another stain / white balance
    a, b = normed.predict(x, verbose=0), normed.predict(shifted, verbose=0)
    assert np.max(np.abs(a - b)) < 1e-3
    layer = normed.get_layer("channel_standardise")
    out = np.asarray(layer(x))
    assert np.allclose(out.mean(axis=(1, 2)), 128, atol=0.5) and np.allclose(
        out.std(axis=(1, 2)), 48, atol=2.0
    )  # std / (std + 1): within 2


def test_background_balance_neutralises_the_cast_and_keeps_the_cell_relative_to_it(tmp_path):
    import keras

    from hematovision.modeling.network import custom_objects

    net = build_network(32, 4, input_norm="background")
    layer = net.get_layer("background_balance")
    field = np.full((1, 32, 32, 3), (235.0, 215.0, 195.0), np.float32)  # a peach background
    field[0, 10:22, 10:22] = (120.0, 60.0, 170.0)  # a nucleus
    cast = field * np.array([0.85, 1.0, 1.15], np.float32)  # the same field under a bluish lamp
    out, out_cast = np.asarray(layer(field)), np.asarray(layer(cast))
    assert np.allclose(out[0, 0, 0], 230, atol=3) and np.allclose(out_cast[0, 0, 0], 230, atol=3)  # background neutral
    np.testing.assert_allclose(out, out_cast, atol=2)  # the cast is gone
    ratio = out[0, 16, 16] / out[0, 0, 0]
    np.testing.assert_allclose(
        ratio, field[0, 16, 16] / field[0, 0, 0], rtol=0.05
    )  # the cell, relative to background, kept
    path = tmp_path / "m.keras"
    net.save(path)
    again = keras.saving.load_model(path, custom_objects=custom_objects(), compile=False)
    np.testing.assert_allclose(again.predict(cast, verbose=0), net.predict(cast, verbose=0), atol=1e-6)
