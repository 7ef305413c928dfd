"""Adapt a model to one laboratory from a few images it has labeled.

A lab's stain, camera and crop move its images away from our training data
(see :mod:`hematovision.training.loso`). A few dozen images it has labeled itself (the
review queue's decisions, or a zip of class folders) are enough to move the
model back, if the adaptation is cautious:

* the network's activations at the input of ``block_15`` are computed once for several
  augmented views of each labeled image (the clean image first); above them, the last
  inverted-residual block (``block_16``), ``Conv_1`` and the head are fine-tuned for a few
  epochs, pulled towards the parent's weights (L2-SP, Li et al. 2018) with BatchNorm
  statistics kept, so a handful of cells moves the top features without wrecking them;
* the head is then re-fitted on the pooled features, starting from and pulled towards the
  fine-tuned head, so classes with few labels keep what the base model knew;
* options measured and not chosen (``docs/adaptation.md``, ``scripts/adapt_check.py``): head
  only (``finetune_from=0``, what adaptation did before), BatchNorm statistics re-estimated on
  the lab's images (``batchnorm="lab"``), fine-tuning from ``block_15``;
* the calibration step is the training recipe's: a temperature and a review
  threshold, fitted on *cross-fitted* logits (each labeled image scored by a
  copy fine-tuned and fitted without it: fine-tuning on every image first made
  the thresholds optimistic), because with few labels there is no spare
  validation set.

The result is saved as a new model version (its card names the parent), never
over the model it came from, with the parent's split manifest and the labeled cells' pooled features
(``lab_features.npz``), from which :func:`hematovision.trust.refit_version` (run right after by the CLI and
the dashboard) refits the unfamiliar-cell check for it.
"""

from __future__ import annotations

import logging
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ..data.labeled import LabeledInputs
from ..imaging import augment as aug
from ..imaging.decode import ImageError, decode_image
from ..imaging.framing import Jitter, model_input
from ..imaging.sources import ImageInput
from ..modeling import persistence, unfamiliar, versions
from ..modeling.network import LOGITS_LAYER, TEMPERATURE_LAYER
from ..serving.litert import export_litert
from ..stats import calibration

log = logging.getLogger("hematovision.adapt")

POOL_LAYER = "pool"


@dataclass(frozen=True)
class AdaptConfig:
    """Knobs of an adaptation; saved into the new model's card."""

    views: int = 4  # per labeled image; the first is the clean image
    steps: int = 300  # full-batch Adam steps on the head
    lr: float = 0.01
    l2sp: float = 1e-3  # pull towards the base head's weights
    label_smoothing: float = 0.05
    folds: int = 5  # cross-fitting for the temperature and threshold
    target_accuracy: float = 0.99
    seed: int = 0
    augment: dict = field(default_factory=lambda: asdict(aug.AugmentConfig()))
    # chosen by scripts/adapt_check.py (docs/adaptation.md): fine-tune block 16 and Conv_1, keep the parent's
    # BatchNorm statistics (re-estimating them on 80 images lost 3-8 points on the shipped model's simulated labs)
    batchnorm: str = "parent"  # "lab": BatchNorm statistics re-estimated on the lab's own images (AdaBN)
    finetune_from: int = 16  # >0: blocks from ``block_<n>`` (15 or 16), ``Conv_1`` and the head fine-tuned first
    ft_epochs: int = 10
    ft_lr: float = 3e-4
    ft_l2sp: float = 0.01  # pull of the fine-tuned convolution weights towards the parent's (L2-SP)
    ft_batch: int = 64
    ft_folds: int = 3  # the calibration's cross-fitting re-runs the fine-tuning per fold (0: head-only cross-fit)


@dataclass
class AdaptResult:
    """A fitted head with its calibration, ready to be saved as a model version."""

    weights: np.ndarray  # (features, classes)
    bias: np.ndarray
    temperature: float
    threshold: calibration.ThresholdChoice
    crossfit_accuracy: float  # of the cross-fitted predictions: an honest estimate from the labels alone
    counts: dict
    seconds: float
    config: AdaptConfig
    #: ``(images, views, F)`` pooled features the head was fitted on (the adapted network's own, view 0 clean): the
    #: lab's cells as the new version sees them, saved with it for the unfamiliar-score refit
    features: np.ndarray | None = field(default=None, repr=False)

    def clean_probs(self) -> np.ndarray:
        """The adapted version's calibrated probabilities of each labeled image's clean view."""
        if self.features is None:
            raise ValueError("no features kept with this adaptation")
        return calibration.softmax((self.features[:, 0] @ self.weights + self.bias) / self.temperature)


def feature_model(network):
    """The network up to the pooled features (shares weights with ``network``)."""
    import keras  # TensorFlow-class library: imported only when a network is used

    return keras.Model(network.input, network.get_layer(POOL_LAYER).output, name="features")


def head_weights(network) -> tuple[np.ndarray, np.ndarray]:
    w, b = network.get_layer(LOGITS_LAYER).get_weights()
    return np.asarray(w, np.float64), np.asarray(b, np.float64)


def pooled_features(
    features,
    images: Sequence[np.ndarray],
    input_size: int,
    views: int,
    augment_cfg: dict,
    seed: int,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
    framing: str = "full",
) -> np.ndarray:
    """``(len(images), views, F)`` pooled features; view 0 is the clean image, the rest augmented
    (and, for ``framing="cell"``, framed with a jittered box, as in training)."""
    cfg = aug.AugmentConfig(**{**augment_cfg, "zoom": tuple(augment_cfg["zoom"])})
    out = []
    batch: list[np.ndarray] = []

    def flush():
        if batch:
            out.append(np.asarray(features.predict_on_batch(np.stack(batch).astype(np.float32))))
            batch.clear()

    for k, rgb in enumerate(images):
        for v in range(views):
            jitter = None
            if v == 0:
                view = rgb
            else:
                rng = np.random.default_rng([seed, k, v, zlib.crc32(rgb[::17, ::17].tobytes())])
                view = aug.augment(rgb, rng, cfg)
                jitter = Jitter.draw(rng) if framing != "full" else None
            batch.append(model_input(view, input_size, framing, jitter))
            if len(batch) >= batch_size:
                flush()
        if progress:
            progress(k + 1)
    flush()
    feats = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return feats.reshape(len(images), views, -1).astype(np.float64)


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray,
    b0: np.ndarray,
    cfg: AdaptConfig,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression from ``(w0, b0)``, full-batch Adam, label smoothing, L2-SP towards ``w0``.

    Pure numpy: with ≤ a few thousand views of 1280 features it takes well under a second.
    """
    n, k = len(x), w0.shape[1]
    t = np.full((n, k), cfg.label_smoothing / k)
    t[np.arange(n), y] += 1 - cfg.label_smoothing
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    sw = sw / sw.sum()
    w, b = w0.copy(), b0.copy()
    params = [w, b]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    for step in range(1, cfg.steps + 1):
        p = calibration.softmax(x @ w + b)
        g = (p - t) * sw[:, None]
        grads = [x.T @ g + cfg.l2sp * (w - w0), g.sum(0)]
        for j, (param, grad) in enumerate(zip(params, grads)):
            m1[j] = 0.9 * m1[j] + 0.1 * grad
            m2[j] = 0.999 * m2[j] + 0.001 * grad * grad
            param -= cfg.lr * (m1[j] / (1 - 0.9 ** step)) / (np.sqrt(m2[j] / (1 - 0.999 ** step)) + 1e-8)
    return w, b


#: Where the adaptation's cached activations are taken: the input of ``block_15``. Everything above it
#: (blocks 15-16, ``Conv_1``, pool, head) is cheap to run again, so the fine-tuning options train on
#: activations computed once per view.
TOP_INPUT = "block_14_add"
#: The blocks ``finetune_from`` may start at.
FINETUNE_BLOCKS = (15, 16)
BATCHNORMS = ("parent", "lab")


def clone_network(network):
    """An independent copy (weights and BatchNorm statistics) of a network."""
    import keras  # TensorFlow-class library: imported only when a network is used

    clone = keras.models.clone_model(network)
    clone.set_weights(network.get_weights())
    return clone


def restat_batchnorm(network, framed: Sequence[np.ndarray], batch_size: int = 32):
    """A copy of ``network`` whose BatchNorm statistics are re-estimated on ``framed`` images (AdaBN,
    Li et al. 2016): each layer normalised with the lab's own batch statistics on the way up, so deeper
    layers are estimated on what they will see; mean and variance pooled over batches by image count."""
    import keras  # TensorFlow-class library: imported only when a network is used

    clone = clone_network(network)
    norms = [layer for layer in clone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.trainable = True  # a frozen BatchNorm ignores ``training=True``
    momenta = [layer.momentum for layer in norms]
    sums = [[0.0, 0.0] for _ in norms]  # per layer: sum of n * batch mean, of n * (batch var + mean^2)
    for start in range(0, len(framed), batch_size):
        xb = np.stack(framed[start : start + batch_size]).astype(np.float32)
        for layer in norms:
            layer.momentum = 0.0  # moving statistics = this batch's
        clone(xb, training=True)
        for layer, acc in zip(norms, sums):
            mean, var = layer.moving_mean.numpy().astype(np.float64), layer.moving_variance.numpy().astype(np.float64)
            acc[0] = acc[0] + len(xb) * mean
            acc[1] = acc[1] + len(xb) * (var + mean * mean)
    for layer, (m1, m2), momentum in zip(norms, sums, momenta):
        mean = m1 / len(framed)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(np.maximum(m2 / len(framed) - mean * mean, 0.0).astype(np.float32))
        layer.trainable = False
        layer.momentum = momentum
    return clone


def _top_input(network):
    """:data:`TOP_INPUT`'s output, or (a network without it, such as the tests' tiny one) the pool's input."""
    if any(layer.name == TOP_INPUT for layer in network.layers):
        return network.get_layer(TOP_INPUT).output
    return network.get_layer(POOL_LAYER).input


def activation_model(network):
    """The network up to :data:`TOP_INPUT` (shares weights with ``network``)."""
    import keras  # TensorFlow-class library: imported only when a network is used

    return keras.Model(network.input, _top_input(network), name="bottom")


def top_model(network):
    """From :data:`TOP_INPUT` to ``(pooled features, logits)``; shares its layers with ``network``."""
    import keras  # TensorFlow-class library: imported only when a network is used

    return keras.Model(
        _top_input(network),
        [network.get_layer(POOL_LAYER).output, network.get_layer(LOGITS_LAYER).output],
        name="top",
    )


def top_outputs(top, acts: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(pooled, logits)`` of ``top`` on activations ``(n, h, w, c)``, float64."""
    pooled, logits = [], []
    for start in range(0, len(acts), batch_size):
        p, lg = top(np.asarray(acts[start : start + batch_size], np.float32), training=False)
        pooled.append(np.asarray(p))
        logits.append(np.asarray(lg))
    if not pooled:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return np.concatenate(pooled).astype(np.float64), np.concatenate(logits).astype(np.float64)


def fine_tune_top(top, acts: np.ndarray, y: np.ndarray, cfg: AdaptConfig) -> list[float]:
    """Fine-tune ``top``'s convolutions from ``block_<cfg.finetune_from>`` up, and its head, on
    activations ``acts`` (views x h x w x c) labeled ``y``, in place; returns the mean loss per epoch.

    Class-balanced cross-entropy with label smoothing, plus ``ft_l2sp / 2 * |w - w_parent|^2`` over the
    convolution weights (L2-SP, Li et al. 2018). BatchNorm statistics stay as they are (the parent's, or
    the lab's) and dropout is off, so the fit is deterministic given ``cfg.seed``.
    """
    import keras  # TensorFlow-class library: imported only when a network is used
    import tensorflow as tf

    if cfg.finetune_from not in FINETUNE_BLOCKS:
        raise ValueError(f"finetune_from must be one of {FINETUNE_BLOCKS}")
    first = {15: ("block_15_", "block_16_"), 16: ("block_16_",)}[cfg.finetune_from]
    for layer in top.layers:
        body = layer.name.startswith(first) or layer.name == "Conv_1"
        layer.trainable = (body or layer.name == LOGITS_LAYER) and not isinstance(
            layer, keras.layers.BatchNormalization
        )
    variables = top.trainable_variables
    penalised = [v for v in variables if not v.path.startswith(LOGITS_LAYER)]
    anchors = [tf.constant(v.numpy()) for v in penalised]
    k = top.outputs[1].shape[-1]
    weight = _balanced(y)
    weight = (weight / weight.mean()).astype(np.float32)
    target = np.full((len(y), k), cfg.label_smoothing / k, np.float32)
    target[np.arange(len(y)), y] += 1 - cfg.label_smoothing
    opt = keras.optimizers.Adam(cfg.ft_lr)

    @tf.function(autograph=False)  # no Python control flow inside
    def step(xb, tb, wb):
        with tf.GradientTape() as tape:
            _, logits = top(xb, training=False)
            ce = tf.nn.softmax_cross_entropy_with_logits(tb, logits)
            loss = tf.reduce_sum(ce * wb) / tf.reduce_sum(wb)
            pull = tf.add_n([tf.reduce_sum(tf.square(v - a)) for v, a in zip(penalised, anchors)] + [0.0])
            total = loss + 0.5 * cfg.ft_l2sp * pull
        opt.apply_gradients(zip(tape.gradient(total, variables), variables))
        return loss

    rng = np.random.default_rng([cfg.seed, 15])
    history = []
    for _ in range(cfg.ft_epochs):
        order = rng.permutation(len(y))
        losses = []
        for start in range(0, len(order), cfg.ft_batch):
            idx = order[start : start + cfg.ft_batch]
            losses.append(float(step(np.asarray(acts[idx], np.float32), target[idx], weight[idx])))
        history.append(float(np.mean(losses)))
    for layer in top.layers:
        layer.trainable = False
    return history


def _balanced(y: np.ndarray) -> np.ndarray:
    counts = np.bincount(y, minlength=y.max() + 1).astype(np.float64)
    return 1.0 / counts[y]


def _folds(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Stratified fold index per image."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), int)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % n_folds
    return fold


def adapt_head(
    feats: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray,
    b0: np.ndarray,
    classes: Sequence[str],
    cfg: AdaptConfig = AdaptConfig(),
    oof: np.ndarray | None = None,
) -> AdaptResult:
    """Fit and calibrate a head on ``feats`` (images x views x F) labeled ``y``; see the module docstring.
    ``oof``: cross-fitted logits computed elsewhere (with the fine-tuning inside the folds), used for the
    temperature and threshold instead of the head-only cross-fit.

    One BLAS thread: these small products are ten times slower when OpenBLAS's threads spin on a busy CPU."""
    with threadpool_limits(1, user_api="blas"):
        return _adapt_head(feats, y, w0, b0, classes, cfg, oof)


def _adapt_head(feats, y, w0, b0, classes, cfg, given_oof=None) -> AdaptResult:
    t0 = time.time()
    y = np.asarray(y, int)
    n_img, views, f = feats.shape
    n_folds = int(min(cfg.folds, np.bincount(y).min())) if len(y) else 0
    oof = np.zeros((n_img, w0.shape[1]))
    if given_oof is not None:
        oof = given_oof
        temperature = calibration.fit_temperature(oof, y, smoothing=1.0 / (len(y) + 2))
    elif n_folds >= 2:
        fold = _folds(y, n_folds, cfg.seed)
        for k in range(n_folds):
            tr = fold != k
            xt = feats[tr].reshape(-1, f)
            yt = np.repeat(y[tr], views)
            w, b = fit_head(xt, yt, w0, b0, cfg, np.repeat(_balanced(y[tr]), views))
            oof[~tr] = feats[~tr, 0] @ w + b  # scored on the clean view, as served
        temperature = calibration.fit_temperature(
            oof, y, smoothing=1.0 / (len(y) + 2)
        )  # a few labels never justify certainty
    else:  # a class with one image: no cross-fitting possible, keep the base temperature scale
        oof = feats[:, 0] @ w0 + b0
        temperature = 1.0
    probs = calibration.softmax(oof / temperature)
    thr = calibration.choose_threshold(probs, y, cfg.target_accuracy)
    w, b = fit_head(feats.reshape(-1, f), np.repeat(y, views), w0, b0, cfg, np.repeat(_balanced(y), views))
    counts = {c: int((y == k).sum()) for k, c in enumerate(classes)}
    return AdaptResult(w, b, float(temperature), thr, float((oof.argmax(1) == y).mean()), counts, time.time() - t0, cfg,
                       feats)


def fit_activations(network, acts: np.ndarray, y: np.ndarray, classes: Sequence[str], cfg: AdaptConfig) -> AdaptResult:
    """Adapt from activations at :data:`TOP_INPUT`, ``(images, views, h, w, c)``: fine-tune the top
    blocks of ``network`` in place (when ``cfg.finetune_from``), then fit and calibrate the head on the
    pooled features (:func:`adapt_head`, pulled towards ``network``'s head as it then is)."""
    y = np.asarray(y, int)
    n, views = acts.shape[:2]
    flat = acts.reshape(n * views, *acts.shape[2:])
    top = top_model(network)
    oof = None
    if cfg.finetune_from:
        oof = _crossfit_finetuned(network, acts, y, cfg)
        fine_tune_top(top, flat, np.repeat(y, views), cfg)
    pooled, _ = top_outputs(top, flat)
    w0, b0 = head_weights(network)
    return adapt_head(pooled.reshape(n, views, -1), y, w0, b0, classes, cfg, oof)


def _crossfit_finetuned(network, acts: np.ndarray, y: np.ndarray, cfg: AdaptConfig) -> np.ndarray | None:
    """Cross-fitted logits of the whole adaptation (fine-tuning and head): each labeled image scored, on its
    clean view, by a copy fine-tuned without it. ``None`` when ``cfg.ft_folds`` < 2 or a class is too small."""
    n_folds = int(min(cfg.ft_folds, np.bincount(y).min())) if len(y) else 0
    if n_folds < 2:
        return None
    n, views = acts.shape[:2]
    fold = _folds(y, n_folds, cfg.seed)
    oof = None
    for k in range(n_folds):
        tr = fold != k
        work = clone_network(network)
        top = top_model(work)
        xt = acts[tr].reshape(-1, *acts.shape[2:])
        yt = np.repeat(y[tr], views)
        fine_tune_top(top, xt, yt, cfg)
        pooled = top_outputs(top, xt)[0]
        w0, b0 = head_weights(work)
        with threadpool_limits(1, user_api="blas"):
            w, b = fit_head(pooled, yt, w0, b0, cfg, np.repeat(_balanced(y[tr]), views))
        held = top_outputs(top, acts[~tr, 0])[0] @ w + b
        oof = np.zeros((n, held.shape[1])) if oof is None else oof
        oof[~tr] = held
    return oof


def adapt_network(
    base,
    images: Sequence[np.ndarray],
    y: np.ndarray,
    classes: Sequence[str],
    cfg: AdaptConfig,
    input_size: int,
    framing: str,
    unlabeled: Sequence[np.ndarray] = (),
    progress: Callable[[int], None] | None = None,
):
    """``(network, result)``: ``base`` adapted to the labeled ``images`` (a new network; ``base`` is not
    changed). BatchNorm statistics, when ``cfg.batchnorm == "lab"``, are re-estimated on the labeled
    images' clean views and the ``unlabeled`` ones; then :func:`fit_activations`."""
    if cfg.batchnorm not in BATCHNORMS:
        raise ValueError(f"batchnorm must be one of {BATCHNORMS}")
    if cfg.batchnorm == "lab":
        net = restat_batchnorm(base, [model_input(im, input_size, framing) for im in [*images, *unlabeled]])
    else:
        net = clone_network(base) if cfg.finetune_from else base
    bottom = activation_model(net)
    acts = pooled_features(bottom, images, input_size, cfg.views, cfg.augment, cfg.seed, progress=progress,
                           framing=framing)
    acts = acts.reshape(len(images), cfg.views, *bottom.output.shape[1:])
    result = fit_activations(net, acts, y, classes, cfg)
    return adapted_network(net, result), result


def describe(cfg: AdaptConfig, n_unlabeled: int = 0) -> str:
    """What an adaptation with ``cfg`` did, in words, for the model card."""
    parts = []
    if cfg.batchnorm == "lab":
        extra = f" and {n_unlabeled} unlabeled images" if n_unlabeled else ""
        parts.append(f"BatchNorm statistics re-estimated on the lab's labeled images{extra} (AdaBN)")
    if cfg.finetune_from:
        parts.append(
            f"blocks {cfg.finetune_from}-16, Conv_1 and the head fine-tuned ({cfg.ft_epochs} epochs, Adam "
            f"{cfg.ft_lr:g}, L2-SP {cfg.ft_l2sp:g} towards the parent's weights, BatchNorm frozen)"
        )
    crossfit = (
        f"cross-fitted logits ({cfg.ft_folds} folds, fine-tuning included)"
        if cfg.finetune_from and cfg.ft_folds >= 2
        else f"cross-fitted logits of the head ({cfg.folds} folds)"
    )
    parts.append(
        f"head re-fitted with L2-SP towards the {'fine-tuned' if cfg.finetune_from else 'parent'} head on the "
        f"pooled features of {cfg.views} view(s) per image (the first clean, the rest augmented); temperature and "
        f"threshold on {crossfit}"
    )
    return "; ".join(parts)


def adapted_network(base_network, result: AdaptResult):
    """A copy of the base network with the adapted head and the new temperature inside.

    Works for any network with the contract of :mod:`hematovision.modeling.network` (a ``logits``
    layer followed by the temperature and softmax), so tests can use tiny ones.
    """
    import keras  # TensorFlow-class library: imported only when a network is used

    clone = keras.models.clone_model(base_network)
    clone.set_weights(base_network.get_weights())
    clone.get_layer(LOGITS_LAYER).set_weights([result.weights.astype(np.float32), result.bias.astype(np.float32)])
    scaled = keras.layers.Rescaling(1.0 / float(result.temperature), name=TEMPERATURE_LAYER)(
        clone.get_layer(LOGITS_LAYER).output
    )
    probs = keras.layers.Softmax(name="probabilities")(scaled)
    return keras.Model(clone.input, probs, name=base_network.name)


def decode_labeled(labeled) -> tuple[list[np.ndarray], list[str], list[tuple[str, str]]]:
    """Decode an :class:`~hematovision.data.labeled.LabeledInputs` into ``(images, labels, skipped)``; a file
    that cannot be read is skipped with its reason, never fatal."""
    images, labels, skipped = [], [], list(labeled.skipped)
    for item, label in zip(labeled.inputs, labeled.labels):
        try:
            images.append(decode_image(item.read()).rgb)
            labels.append(label)
        except (ImageError, OSError) as exc:
            skipped.append((item.name, str(exc)))
    return images, labels, skipped


def labeled_from_reviews(store, classes: Sequence[str], *, batch: str | None = None, model_version: str | None = None):
    """The review queue's decided images as labeled inputs: confirmed and reclassified cells, one per
    image (the latest decision across model versions); ``unusable`` ones are left out. ``batch`` (and
    ``model_version``): only the decisions on that batch's items (of that version), as the Review page lists them.

    The images are the queue's stored thumbnails (at most 256 px a side), which is also
    about the model's input size."""
    latest: dict = {}
    for item in store.items(model_version):
        d = item.decision
        if d is None or d.reviewed_class not in classes or (batch is not None and item.batch != batch):
            continue
        if item.sha256 not in latest or (d.reviewed_at, d.id) > (
            latest[item.sha256].decision.reviewed_at,
            latest[item.sha256].decision.id,
        ):
            latest[item.sha256] = item
    out = LabeledInputs()
    for sha, item in sorted(latest.items(), key=lambda kv: kv[1].decision.id):
        def read(sha=sha, version=item.model_version):
            data = store.thumbnail(sha, version)
            if data is None:
                raise OSError("no stored image for this review")
            return data

        out.inputs.append(ImageInput(item.file or sha[:12], read))
        out.labels.append(item.decision.reviewed_class)
        out.groups.append(sha)
    return out


def check_labels(labels: Sequence[str], classes: Sequence[str], minimum: int = 2) -> None:
    """Adaptation needs ``minimum`` images of every class; raises ValueError saying which are short."""
    short = [f"{c} ({labels.count(c)})" for c in classes if list(labels).count(c) < minimum]
    if short:
        raise ValueError(
            f"adaptation needs at least {minimum} labeled images of every class; too few for: {', '.join(short)}"
        )


def adapt_model(
    base_dir: Path,
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    out_dir: Path,
    name: str,
    cfg: AdaptConfig = AdaptConfig(),
    source: str = "",
    progress: Callable[[int, int], None] | None = None,
    litert: bool = True,
    unlabeled: Sequence[np.ndarray] = (),
) -> Path:
    """Adapt the model in ``base_dir`` to labeled images and save it as a new version in ``out_dir``.

    ``labels`` must be among the base model's classes. ``out_dir`` must not exist yet:
    a version is never overwritten. ``progress(done, total)`` is called per image.
    """
    return _adapt_and_save(base_dir, images, labels, out_dir, name, cfg, source, progress, litert, unlabeled)[0]


def _adapt_and_save(
    base_dir: Path,
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    out_dir: Path,
    name: str,
    cfg: AdaptConfig = AdaptConfig(),
    source: str = "",
    progress: Callable[[int, int], None] | None = None,
    litert: bool = True,
    unlabeled: Sequence[np.ndarray] = (),
):
    """:func:`adapt_model`, returning ``(out_dir, network)``: the saved version's Keras network too."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists: adapted versions are never overwritten; choose another name")
    if base_dir.resolve() == out_dir.resolve():
        raise ValueError("an adapted model cannot be saved over its parent")
    t0 = time.time()
    card = persistence.load_card(base_dir)
    unknown = sorted(set(labels) - set(card.classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not classes of the model ({', '.join(card.classes)})")
    if len(images) != len(labels):
        raise ValueError("need one label per image")
    check_labels(list(labels), card.classes)
    y = np.array([card.classes.index(lbl) for lbl in labels])
    base = persistence.load_keras_model(base_dir, card)
    # The base temperature is inside the saved network: features and head weights are read before it.
    net, result = adapt_network(base, images, y, card.classes, cfg, card.input_size, card.framing, unlabeled,
                                progress=(lambda k: progress(k, len(images))) if progress else None)
    new = persistence.ModelCard(
        name=name,
        classes=list(card.classes),
        input_size=card.input_size,
        framing=card.framing,
        framing_revision=card.framing_revision,
        preprocessing=card.preprocessing,
        temperature=result.temperature,
        default_threshold=float(result.threshold.threshold),
        parent=card.version,
        threshold={
            "target_accuracy": cfg.target_accuracy,
            "val_accuracy_accepted": result.threshold.accuracy,
            "val_coverage": result.threshold.coverage,
            "val_flagged_share": 1 - result.threshold.coverage,
            "fitted_on": "cross-fitted logits of the labeled images",
        },
        training={
            "adaptation": {
                "parent": card.version,
                "source": source,
                "labeled_counts": result.counts,
                "method": describe(cfg, len(unlabeled)),
                "crossfit_accuracy": result.crossfit_accuracy,
                "config": asdict(cfg),
                "wall_time_seconds": round(time.time() - t0, 1),
                "machine": persistence.machine_description(),
            },
            "counts": card.training.get("counts", {}),
            "split_rules": card.training.get("split_rules", ""),
        },
    )
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    persistence.save_model(net, new, tmp)
    # what the unfamiliar-cell refit needs (trust.fit.refit_version, fit-trust): the parent's split, whose images
    # are the version's training data too, and the lab's cells as the adapted network sees them (features only)
    if (base_dir / persistence.MANIFEST_FILE).is_file():
        shutil.copyfile(base_dir / persistence.MANIFEST_FILE, tmp / persistence.MANIFEST_FILE)
    if result.features is not None:
        unfamiliar.save_lab_cells(
            unfamiliar.LabCells(result.features, result.clean_probs(), list(labels), new.model_sha256), tmp
        )
    if litert:
        try:
            export_litert(tmp, list(images[:16]), f"{min(16, len(images))} of the labeled images", network=net)
        except Exception as exc:  # serving falls back to model.keras
            log.warning("LiteRT export of the adapted model failed (%s); it will be served from model.keras", exc)
    tmp.rename(out_dir)  # the version appears whole or not at all
    return out_dir, net


@dataclass
class AdaptOutcome:
    """What the CLI and the dashboard report after an adaptation."""

    path: Path
    version: str
    parent: str
    counts: dict
    crossfit_accuracy: float
    temperature: float
    threshold: float
    seconds: float
    skipped: list  # (name, reason) of labeled files that were not used
    target_accuracy: float = 0.99
    #: the saved version's Keras network, in memory for the unfamiliar-cell refit that follows (``None`` once it ran)
    network: object = field(default=None, repr=False, compare=False)

    @property
    def note(self) -> str:
        """What a user must know about the default threshold of the new version ("" when nothing)."""
        if self.threshold >= 0.999:
            return (
                f"With these labeled images the cross-fitted predictions never reach {self.target_accuracy:.0%} "
                f"accuracy, so the new "
                "version's default threshold flags every prediction. Label more images (20 or more per class), or set "
                "a "
                "lower threshold in the sidebar knowing it is not backed by that target."
            )
        return ""


def adapt_labeled(
    base_dir: Path,
    labeled,
    name: str,
    out_dir: Path | None = None,
    cfg: AdaptConfig = AdaptConfig(),
    source: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> AdaptOutcome:
    """Decode labeled inputs (:class:`~hematovision.data.labeled.LabeledInputs`), adapt, save as version ``name``.

    ``out_dir`` defaults to :func:`versions.new_version_dir` (the per-user model folder).
    Raises ValueError / FileExistsError with a message for the user.
    """
    versions.check_name(name)
    out_dir = Path(out_dir) if out_dir else versions.new_version_dir(name)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists: adapted versions are never overwritten; choose another name")
    images, labels, skipped = decode_labeled(labeled)
    path, network = _adapt_and_save(base_dir, images, labels, out_dir, name, cfg, source=source, progress=progress)
    card = persistence.load_card(path)
    ad = card.training["adaptation"]
    return AdaptOutcome(
        path,
        card.version,
        card.parent,
        ad["labeled_counts"],
        ad["crossfit_accuracy"],
        card.temperature,
        card.default_threshold,
        ad["wall_time_seconds"],
        skipped,
        cfg.target_accuracy,
        network,
    )
