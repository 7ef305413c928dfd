"""Deep fine-tuning on the fly: the whole MobileNetV2 trainable, fresh augmented views every epoch.

The cached recipe (:mod:`hematovision.training.recipe`) freezes everything below ``block_12_add`` at ImageNet's
weights and shows each image in a handful of cached colourings, so whatever the network learns about stain can
only be learnt in its top blocks. Colour enters the network in its first convolution; invariance to it is most
naturally learnt there (issue: other laboratories' images, "augmentation on the fly with the lower blocks
trainable"). This phase starts from a trained model (its head already fits the classes), makes every layer but
BatchNorm trainable (BatchNorm keeps ImageNet's statistics, as in every recipe here) and shows each training image
a new view of the same augmentation recipe every epoch, drawn while the previous batch trains.

An epoch is every PBC training image and a random ``kaggle_per_epoch`` of Kaggle's (its training images are ~30
augmented copies of each field's cell, so a third of them a time loses little). The validation loss on the clean
validation images decides early stopping, as in :func:`recipe.fit`; the run checkpoints every epoch and resumes.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import TRAINING_CLASSES, data_root
from ..data import datasets as ds
from ..modeling import persistence
from ..modeling.network import LOGITS_LAYER, build_network, set_trainable_top, transfer_weights
from .recipe import Fitted, RunFiles, TrainConfig, balanced_weights, split_images, training_view

log = logging.getLogger("hematovision.training")

#: View numbers of the on-the-fly draws start here, above the cached recipe's and the mild views
#: (``recipe.is_mild_view`` is false from ``MILD_VIEW_END`` up): these are the recipe's full colour views.
DEEP_VIEW_BASE = 10_000
#: The second view of each image under ``consistency`` (its own stream of draws, also a full colour view).
PAIR_VIEW_BASE = 50_000
#: Batches drawn ahead of the training step, one per drawing thread.
DRAW_AHEAD = 2
#: The one recipe view of each validation image that ``select_on_views`` scores.
VAL_VIEW = 99_999


@dataclass
class DeepConfig:
    """The deep phase's own knobs; the augmentation, framing and input size are the :class:`TrainConfig`'s."""

    init_from: str  # a model directory whose weights start the phase
    lr: float = 5e-5  # peak, after a short warm-up; cosine decay to 0 over max_epochs
    max_epochs: int = 12
    patience: int = 3
    batch_size: int = 32
    kaggle_per_epoch: int = 3000
    # Early stopping on the clean validation images alone rewards leaning on the training sources' own colours;
    # with this on, the loss that selects is the mean of the clean images' and of one fixed recipe view of each
    # (the training augmentation's ranges, never the stain-shift suite's held-out ones).
    select_on_views: bool = False
    # 0: every layer but BatchNorm trains; N: MobileNetV2 from block_N up (the layers below keep the parent's weights).
    first_block: int = 0
    # > 0: every image is shown in two colour views per step, and this weight times the Jensen-Shannon divergence
    # of their two predictions joins the loss (AugMix's consistency term; 12 is its published weight). An epoch
    # then holds half the images, so that it costs the same number of forward passes.
    consistency: float = 0.0

    def __post_init__(self):
        # Epoch e draws view DEEP_VIEW_BASE + e (and PAIR_VIEW_BASE + e): the streams must not meet each other or
        # the validation view.
        most = min(PAIR_VIEW_BASE - DEEP_VIEW_BASE, VAL_VIEW - PAIR_VIEW_BASE)
        if not 0 < self.max_epochs <= most:
            raise ValueError(f"max_epochs must be between 1 and {most}")


def epoch_images(train: list[ds.LabeledImage], epoch: int, kaggle_per_epoch: int, seed: int) -> list[ds.LabeledImage]:
    """This epoch's images in training order: every non-Kaggle image and a random ``kaggle_per_epoch`` of Kaggle's."""
    rng = np.random.default_rng([seed, epoch, 31])
    kaggle = [i for i in train if i.source == "kaggle"]
    rest = [i for i in train if i.source != "kaggle"]
    if 0 < kaggle_per_epoch < len(kaggle):
        kaggle = [kaggle[k] for k in sorted(rng.choice(len(kaggle), kaggle_per_epoch, replace=False))]
    chosen = kaggle + rest
    return [chosen[k] for k in rng.permutation(len(chosen))]


def js_divergence(pa, pb):
    """Jensen-Shannon divergence (nats) between two rows of class probabilities, row by row (TensorFlow ops)."""
    import tensorflow as tf  # TensorFlow-class library: loaded only when training runs

    m = tf.clip_by_value((pa + pb) / 2.0, 1e-7, 1.0)
    pa, pb = tf.clip_by_value(pa, 1e-7, 1.0), tf.clip_by_value(pb, 1e-7, 1.0)
    kl_a, kl_b = (tf.reduce_sum(p * tf.math.log(p / m), axis=-1) for p in (pa, pb))
    return 0.5 * kl_a + 0.5 * kl_b


def _consistency_step(trainer, weight: float, smoothing: float):
    """One training step on ``x`` = the batch's first views, then its second views: the weighted cross-entropy on
    all of them plus ``weight`` times the weighted mean Jensen-Shannon divergence of each image's two predictions.
    Returns (total loss, cross-entropy)."""
    import keras
    import tensorflow as tf  # TensorFlow-class library: loaded only when training runs

    ce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing, reduction=None)
    opt = trainer.optimizer
    opt.build(trainer.trainable_variables)

    @tf.function(reduce_retracing=True)
    def step(x, y, w):
        y2, w2 = tf.concat([y, y], 0), tf.concat([w, w], 0)
        with tf.GradientTape() as tape:
            logits = trainer(x, training=True)
            loss_ce = tf.reduce_sum(w2 * ce(y2, logits)) / tf.cast(tf.shape(w2)[0], tf.float32)
            pa, pb = tf.split(tf.nn.softmax(logits), 2)
            loss_js = tf.reduce_sum(w * js_divergence(pa, pb)) / tf.cast(tf.shape(w)[0], tf.float32)
            loss = loss_ce + weight * loss_js
        grads = tape.gradient(loss, trainer.trainable_variables)
        opt.apply_gradients(zip(grads, trainer.trainable_variables))
        return tf.stack([loss, loss_ce])

    return step


def _selection_scores(trainer, x_val, x_val_views, y_val, w_val, sources, smoothing: float) -> dict:
    """The clean validation scores, and with recipe views of them (``x_val_views``) theirs too (``aug_``-prefixed);
    ``select_loss`` is what early stopping compares."""
    out = _val_scores(trainer, x_val, y_val, w_val, sources, smoothing)
    if x_val_views is None:
        return {**out, "select_loss": out["val_loss"]}
    aug = {f"aug_{k}": v for k, v in _val_scores(trainer, x_val_views, y_val, w_val, sources, smoothing).items()}
    return {**out, **aug, "select_loss": (out["val_loss"] + aug["aug_val_loss"]) / 2}


def _val_scores(trainer, x_val, y_val, w_val, sources, smoothing: float) -> dict:
    logits = trainer.predict(x_val, batch_size=128, verbose=0)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = logits.shape[1]
    target = np.full_like(logp, smoothing / n)
    target[np.arange(len(y_val)), y_val] += 1.0 - smoothing
    loss = float(np.sum(w_val * -(target * logp).sum(axis=1)) / np.sum(w_val))
    right = logits.argmax(axis=1) == y_val
    out = {"val_loss": loss, "val_acc": float(np.sum(w_val * right) / np.sum(w_val))}
    for s in sorted(set(sources)):
        m = np.asarray(sources) == s
        out[f"val_acc_{s}"] = float(right[m].mean())
    return out


def deep_fit(work: Path, cfg: TrainConfig, root: Path | None = None, cache_root: Path | None = None, *,
             deep: DeepConfig) -> Fitted:
    """Run the deep phase in ``work`` (resumable) and return the :class:`Fitted` network for ``recipe.export``.
    ``cache_root`` is unused (nothing is cached: every view is drawn fresh); it keeps :func:`recipe.fit`'s call."""
    import keras  # TensorFlow-class library: loaded only when training runs

    root = root or data_root()
    work.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.fitting_seed)
    t0 = time.time()
    split = split_images(root, work, cfg)
    parent = persistence.load_keras_model(Path(deep.init_from))
    net = build_network(cfg.input_size, len(TRAINING_CLASSES), dropout=cfg.dropout, input_norm=cfg.input_norm)
    transfer_weights(parent, net)
    del parent
    n_trainable = set_trainable_top(net, deep.first_block)
    trainer = keras.Model(net.input, net.get_layer(LOGITS_LAYER).output, name="deep_trainer")
    files = RunFiles(work)
    state = files.resume(net)
    if state.phase == "head":  # a fresh run: this phase has no head epochs
        state.phase = "deep"
    (work / "deep_config.json").write_text(json.dumps(asdict(deep), indent=1))

    # Each image's views per step: two under the consistency term, so an epoch holds 1/len(bases) of the images and
    # a step 1/len(bases) of the batch, keeping an epoch's forward passes.
    bases = (DEEP_VIEW_BASE, PAIR_VIEW_BASE) if deep.consistency > 0 else (DEEP_VIEW_BASE,)
    per_step = max(1, deep.batch_size // len(bases))
    n_epoch = len(epoch_images(split.train, 0, deep.kaggle_per_epoch, cfg.fitting_seed))  # the same every epoch
    per_epoch = (n_epoch + len(bases) - 1) // len(bases)
    steps_per_epoch = (per_epoch + per_step - 1) // per_step
    steps = deep.max_epochs * steps_per_epoch
    # A short warm-up: Adam's first steps are full-sized, and the lower blocks hold ImageNet's filters.
    schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=steps, warmup_target=deep.lr,
                                                      warmup_steps=max(1, min(200, steps // 10)))
    trainer.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
                    loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing))
    step = _consistency_step(trainer, deep.consistency, cfg.label_smoothing) if deep.consistency > 0 else None
    # A resumed run takes the learning-rate schedule up where it stopped (Adam's moments start afresh).
    trainer.optimizer.build(trainer.trainable_variables)
    trainer.optimizer.iterations.assign(state.epoch * steps_per_epoch)
    cls_index = {c: k for k, c in enumerate(TRAINING_CLASSES)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        x_val = np.stack(list(pool.map(lambda i: training_view(i, -1, cfg), split.val))).astype(np.float32)
        x_val_views = (np.stack(list(pool.map(lambda i: training_view(i, VAL_VIEW, cfg), split.val))).astype(np.float32)
                       if deep.select_on_views else None)
    y_val = np.array([cls_index[i.label] for i in split.val])
    w_val = balanced_weights(split.val)
    src_val = [i.source for i in split.val]
    log.info("deep phase: %d trainable weights, %d validation images, from %s", n_trainable, len(x_val),
             deep.init_from)
    if state.epoch == 0 and not state.history:
        rec = {"phase": "deep", "epoch": -1, **_selection_scores(trainer, x_val, x_val_views, y_val, w_val, src_val,
                                                                 cfg.label_smoothing), "t": round(time.time() - t0, 1)}
        state.history.append(rec)
        state.best_val_loss, state.best_epoch = rec["select_loss"], -1
        net.save_weights(str(files.best))
        files.save(net, state)
        log.info("%s", rec)
    with ThreadPoolExecutor(max_workers=2) as pool:
        while state.phase == "deep" and state.epoch < deep.max_epochs:
            e = state.epoch
            images = epoch_images(split.train, e, deep.kaggle_per_epoch, cfg.fitting_seed)
            images = images[:per_epoch]
            w = balanced_weights(images)
            y = keras.utils.to_categorical([cls_index[i.label] for i in images], len(TRAINING_CLASSES))
            batches = [range(b, min(b + per_step, len(images))) for b in range(0, len(images), per_step)]

            def draw(rows, e=e, images=images):
                return np.stack([training_view(images[k], base + e, cfg) for base in bases for k in rows]
                                ).astype(np.float32)

            # Colour views cost about as much CPU as the training step: both threads draw, two batches ahead.
            pending = deque(pool.submit(draw, rows) for rows in batches[:DRAW_AHEAD])
            losses = []
            for b, rows in enumerate(batches):
                x = pending.popleft().result()
                if b + DRAW_AHEAD < len(batches):
                    pending.append(pool.submit(draw, batches[b + DRAW_AHEAD]))
                if step is not None:
                    r = step(x, y[rows.start:rows.stop].astype(np.float32), w[rows.start:rows.stop].astype(np.float32))
                else:
                    r = trainer.train_on_batch(x, y[rows.start:rows.stop], sample_weight=w[rows.start:rows.stop])
                losses.append(float(np.ravel(r)[0]))
            rec = {"phase": "deep", "epoch": e, "loss": float(np.mean(losses)),
                   "step": int(trainer.optimizer.iterations.numpy()),
                   **_selection_scores(trainer, x_val, x_val_views, y_val, w_val, src_val, cfg.label_smoothing),
                   "t": round(time.time() - t0, 1)}
            state.history.append(rec)
            log.info("%s", rec)
            state.epoch += 1
            if rec["select_loss"] < state.best_val_loss:
                state.best_val_loss, state.best_epoch = rec["select_loss"], e
                net.save_weights(str(files.best))
            files.save(net, state)
            if e - state.best_epoch >= deep.patience:
                log.info("early stop at epoch %d (best %d)", e, state.best_epoch)
                break
    state.phase = "done"
    files.save(net, state)
    net.load_weights(str(files.best))
    return Fitted(net, None, trainer, split, state, 0.0, time.time() - t0, work)
