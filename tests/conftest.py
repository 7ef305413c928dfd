"""Shared fixtures: a tiny model directory, generated images, and the real data root."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True, scope="session")
def _private_user_data_dir(tmp_path_factory):
    """Tests never read or write the real per-user data (review decisions, adapted models)."""
    old = os.environ.get("HEMATOVISION_HOME")
    os.environ["HEMATOVISION_HOME"] = str(tmp_path_factory.mktemp("hematovision-home"))
    yield
    if old is None:
        os.environ.pop("HEMATOVISION_HOME", None)
    else:
        os.environ["HEMATOVISION_HOME"] = old

CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def build_tiny_network(input_size: int = 32, temperature: float = 1.5):
    """A few-kilobyte network with the shipped model's contract (layer names included)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(input_size, input_size, name="resize")(inp)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="Conv1")(x)
    x = keras.layers.ReLU(name="out_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(len(CLASSES), name="logits")(x)
    x = keras.layers.Rescaling(1.0 / temperature, name="temperature")(x)
    out = keras.layers.Softmax(name="probabilities")(x)
    return keras.Model(inp, out, name="tiny")


def make_tiny_model_dir(path: Path, input_size: int = 32, temperature: float = 1.5, threshold: float = 0.3) -> Path:
    from hematovision.modeling import persistence

    net = build_tiny_network(input_size, temperature)
    card = persistence.ModelCard(
        name="tiny-test-model",
        classes=list(CLASSES),
        input_size=input_size,
        temperature=temperature,
        default_threshold=threshold,
        threshold={
            "target_accuracy": 0.99,
            "val_accuracy_accepted": 0.99,
            "val_coverage": 0.8,
            "val_flagged_share": 0.2,
        },
    )
    persistence.save_model(net, card, path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


def image_bytes(fmt: str = "PNG", size=(64, 48), seed: int = 0, mode: str = "RGB") -> bytes:
    """A small generated image: a dark blob on a light background, encoded with Pillow."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.full((h, w, 3), 230, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
    arr[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(w, h) // 5) ** 2] = (90, 40, 140)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data root; tests that need it are skipped with the reason when it is absent."""
    from hematovision.config import data_root as root

    r = root()
    if not (r / "pbc").is_dir() or not (r / "blood-cells").is_dir():
        pytest.skip(f"real data not found at {r} (set HEMATOVISION_DATA to the folder holding pbc/ and blood-cells/)")
    return r
