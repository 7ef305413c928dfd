"""The network: MobileNetV2 (ImageNet) with resizing, preprocessing, head and temperature inside.

The saved Keras model maps RGB pixel values (0..255, any size) straight to
calibrated class probabilities, so nothing outside it can drift from training:

    image -> Resizing(S) [-> ChannelStandardise] -> Rescaling(1/127.5, -1) [= mobilenet_v2.preprocess_input]
          -> MobileNetV2 body -> global average pool -> dropout -> Dense (logits)
          -> Rescaling(1/T) (temperature) -> Softmax

All layers sit in one flat functional graph (no nested model), so Grad-CAM can
reach the last convolution (``out_relu``) directly.

TensorFlow is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path

#: Layer whose output is cached during training: everything up to it stays frozen
#: at ImageNet weights; blocks 13-16, the last 1x1 conv and the head are fine-tuned.
SPLIT_LAYER = "block_12_add"
LAST_CONV_LAYER = "out_relu"
LOGITS_LAYER = "logits"
TEMPERATURE_LAYER = "temperature"


_CUSTOM: dict = {}


def custom_objects() -> dict:
    """Our own Keras layers, registered once (``load_model`` needs them)."""
    if _CUSTOM:
        return _CUSTOM
    import keras

    @keras.saving.register_keras_serializable(package="hematovision")
    class ChannelStandardise(keras.layers.Layer):
        """Per image and colour channel: to mean 128 and standard deviation 48.

        A stain or camera shift moves and stretches each channel's histogram; this
        undoes the first-order part of it (a grey-world colour constancy plus contrast
        normalisation), inside the model so training and serving cannot differ.
        """

        def call(self, x):
            ops = keras.ops
            mean = ops.mean(x, axis=(1, 2), keepdims=True)
            std = ops.std(x, axis=(1, 2), keepdims=True)
            return ops.clip((x - mean) / (std + 1.0) * 48.0 + 128.0, 0.0, 255.0)

    @keras.saving.register_keras_serializable(package="hematovision")
    class BackgroundBalance(keras.layers.Layer):
        """Per image: scale each colour channel so the background becomes neutral (230, 230, 230).

        Labs differ in the colour cast of the whole field (PBC's is peach, Kaggle's lavender):
        a white balance on the smear's background (the brightest pixels, softly selected above
        mean + 1 s.d. of luminance) removes the cast but keeps the cell's colours *relative to
        the background*, which is what tells eosinophil granules from neutrophil cytoplasm.
        """

        def call(self, x):
            ops = keras.ops
            lum = ops.mean(x, axis=-1, keepdims=True)
            thr = ops.mean(lum, axis=(1, 2), keepdims=True) + ops.std(lum, axis=(1, 2), keepdims=True)
            w = ops.sigmoid((lum - thr) / 4.0)
            bg = ops.sum(w * x, axis=(1, 2), keepdims=True) / (ops.sum(w, axis=(1, 2), keepdims=True) + 1e-3)
            return ops.clip(x * (230.0 / ops.maximum(bg, 16.0)), 0.0, 255.0)

    _CUSTOM["hematovision>ChannelStandardise"] = ChannelStandardise
    _CUSTOM["hematovision>BackgroundBalance"] = BackgroundBalance
    return _CUSTOM


#: ``input_norm`` values: what happens to the resized pixels before ``preprocess_input``.
INPUT_NORMS = ("none", "channel", "background")


def build_network(
    input_size: int,
    n_classes: int,
    *,
    temperature: float = 1.0,
    imagenet_weights: Path | None = None,
    dropout: float = 0.2,
    input_norm: str = "none",
):
    """A fresh network; with ``imagenet_weights`` the MobileNetV2 body starts from ImageNet.
    ``input_norm="channel"`` standardises each image's colour channels first (see :func:`custom_objects`)."""
    import keras

    if input_norm not in INPUT_NORMS:
        raise ValueError(f"input_norm must be one of {INPUT_NORMS}")
    inp = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(input_size, input_size, interpolation="bilinear", name="resize")(inp)
    if input_norm == "channel":
        x = custom_objects()["hematovision>ChannelStandardise"](name="channel_standardise")(x)
    elif input_norm == "background":
        x = custom_objects()["hematovision>BackgroundBalance"](name="background_balance")(x)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
    body = keras.applications.MobileNetV2(include_top=False, weights=None, input_tensor=x, alpha=1.0)
    if imagenet_weights is not None:
        plain = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(input_size, input_size, 3))
        plain.load_weights(str(imagenet_weights))
        for layer in plain.layers:
            if layer.weights:
                body.get_layer(layer.name).set_weights(layer.get_weights())
    x = keras.layers.GlobalAveragePooling2D(name="pool")(body.output)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(n_classes, name=LOGITS_LAYER)(x)
    scaled = keras.layers.Rescaling(1.0 / float(temperature), name=TEMPERATURE_LAYER)(logits)
    probs = keras.layers.Softmax(name="probabilities")(scaled)
    return keras.Model(inp, probs, name="hematovision")


def split_models(network):
    """``(bottom, top)``: bottom maps images to the cached features at :data:`SPLIT_LAYER`;
    top maps those features to logits. Both share layers (and weights) with ``network``."""
    import keras

    cut = network.get_layer(SPLIT_LAYER).output
    bottom = keras.Model(network.input, cut, name="bottom")
    top = keras.Model(cut, network.get_layer(LOGITS_LAYER).output, name="top")
    return bottom, top


def set_trainable_top(network, first_block: int) -> int:
    """Freeze everything before ``block_<first_block>`` (and every BatchNorm); return the trainable count.
    ``first_block <= 0``: every layer but BatchNorm trains (the first convolution too).

    BatchNorm stays in inference mode, as keras-io's fine-tuning guide advises for
    small data sets: its ImageNet statistics are kept.
    """
    import keras

    trainable = first_block <= 0
    for layer in network.layers:
        if layer.name.startswith(f"block_{first_block}_") or layer.name in ("Conv_1", "pool", "dropout", LOGITS_LAYER):
            trainable = True
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        else:
            layer.trainable = trainable
    return sum(int(w.numpy().size) for w in network.trainable_weights)


def transfer_weights(src, dst) -> None:
    """Copy weights layer by layer, by name (e.g. into a network built with a new temperature)."""
    for layer in src.layers:
        if layer.weights:
            dst.get_layer(layer.name).set_weights(layer.get_weights())
