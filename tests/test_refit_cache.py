"""The refit cache (trust.refit_cache): a hit gives the features the served path gives; a cache of another network's
bottom, of other images, or a damaged one is never read. Tiny model, a few generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_model_dir
from hematovision.modeling import persistence
from hematovision.serving.classifier import Classifier
from hematovision.serving.litert import TappedRuntime, export_litert, generated_images
from hematovision.trust import refit_cache


@pytest.fixture(scope="module")
def tiny_with_litert(tmp_path_factory) -> Path:
    d = make_tiny_model_dir(tmp_path_factory.mktemp("refit_cache") / "m")
    export_litert(d, generated_images(4), "4 generated images")
    return d


def _group(images, name: str = "bank", ident: tuple[str, ...] = ("generated", "seed 0")) -> refit_cache.Group:
    return refit_cache.Group(name, ident, lambda: images, lambda x, k: x)


def test_a_cache_hit_gives_the_served_models_features(tiny_with_litert, tmp_path):
    d = tiny_with_litert
    card = persistence.load_card(d)
    net = persistence.load_keras_model(d, card)
    images = generated_images(12, seed=3)
    groups = [_group(images[:8]), _group(images[8:], "validation", ("other", "images"))]
    served_p, served_f = Classifier.load(d).proba_and_features(images)

    first = refit_cache.features(net, card.input_size, card.framing, groups, tmp_path, litert_path=d / "model.tflite")
    assert first.cache == "written" and first.computed_by == "LiteRT"  # the served flat-buffer, its activations kept
    np.testing.assert_allclose(first.groups["bank"][1], served_f[:8], atol=1e-5)
    np.testing.assert_allclose(first.groups["validation"][0], served_p[8:], atol=1e-5)

    again = refit_cache.features(net, card.input_size, card.framing, groups, tmp_path)
    assert again.cache == "read" and again.path == first.path  # the Keras top on the cached (float16) activations
    for name in ("bank", "validation"):
        scale = np.abs(first.groups[name][1]).max()
        np.testing.assert_allclose(again.groups[name][1], first.groups[name][1], atol=2e-3 * scale)
        np.testing.assert_allclose(again.groups[name][0], first.groups[name][0], atol=2e-3)

    # other images (another identity) are a miss; so is a damaged file, which is computed again
    other = refit_cache.features(net, card.input_size, card.framing, [_group(images[:8], ident=("x",))], tmp_path)
    assert other.cache == "written" and other.path != first.path
    first.path.write_bytes(b"not an npz")
    assert refit_cache.features(net, card.input_size, card.framing, groups, tmp_path).cache == "written"
    # a folder that cannot be made (a file is in the way): the features all the same, nothing cached
    (tmp_path / "blocked").write_text("a file")
    blocked = refit_cache.features(net, card.input_size, card.framing, groups, tmp_path / "blocked" / "cache")
    assert blocked.cache == "not written"
    np.testing.assert_allclose(blocked.groups["bank"][1], served_f[:8], atol=1e-5)


def test_a_cache_of_another_networks_bottom_is_not_used(tiny_with_litert, tmp_path):
    d = tiny_with_litert
    card = persistence.load_card(d)
    net = persistence.load_keras_model(d, card)
    images = generated_images(6, seed=5)
    groups = [_group(images)]
    assert refit_cache.features(net, card.input_size, card.framing, groups, tmp_path).cache == "written"

    # an adaptation that changed a layer below the cut (here the first convolution): another key, its own features
    other = persistence.load_keras_model(d, card)
    w, b = other.get_layer("Conv1").get_weights()
    other.get_layer("Conv1").set_weights([w * 1.5, b + 0.1])
    got = refit_cache.features(other, card.input_size, card.framing, groups, tmp_path)
    assert got.cache == "written" and got.computed_by == "Keras"
    own = refit_cache.features(other, card.input_size, card.framing, groups, None)  # uncached
    assert own.cache == "not used"
    np.testing.assert_allclose(got.groups["bank"][1], own.groups["bank"][1], atol=1e-5)
    mine = refit_cache.features(net, card.input_size, card.framing, groups, tmp_path)
    assert mine.cache == "read" and not np.allclose(mine.groups["bank"][1], got.groups["bank"][1], atol=1e-3)
    # a change above the cut (the head) keeps the key: that is what an adaptation changes
    head = persistence.load_keras_model(d, card)
    w, b = head.get_layer("logits").get_weights()
    head.get_layer("logits").set_weights([w * 2, b])
    assert refit_cache.features(head, card.input_size, card.framing, groups, tmp_path).cache == "read"
    assert len(list(tmp_path.glob("*.npz"))) <= refit_cache.KEEP


def test_the_tapped_flat_buffer_refuses_a_layer_it_does_not_hold(tiny_with_litert):
    with pytest.raises(persistence.ModelError, match="tensors named after layer"):
        TappedRuntime(tiny_with_litert / "model.tflite", "block_15_add")
