"""Classify images with a saved model: batch in, typed results out, in input order.

``Classifier`` follows scikit-learn's conventions (``classes_``,
``predict_proba``) and Hugging Face's pipeline shape (``classify`` takes a batch
of inputs and yields one :class:`Prediction` per input). Images are decoded in
worker threads while the previous batch runs through the network, a fixed
number of images at a time, so memory stays bounded for any number of inputs.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import model_dir as default_model_dir
from ..imaging.decode import thumbnail
from ..imaging.framing import model_input
from ..imaging.limits import DEFAULT_LIMITS, ImageLimits
from ..imaging.sources import ImageInput, load_input
from ..modeling import persistence, unfamiliar
from ..stats import round_threshold
from . import litert

#: The layer whose output is the pooled penultimate features (modeling.network's global average pool).
FEATURES_LAYER = litert.FEATURES_LAYER


@dataclass(frozen=True)
class Prediction:
    """The result for one input. ``error`` is empty when the image was classified."""

    file: str
    predicted_class: str = ""
    confidence: float = math.nan
    probabilities: tuple[float, ...] = ()
    flagged: bool = False
    error: str = ""
    sha256: str = ""
    note: str = ""
    thumbnail: np.ndarray | None = field(default=None, repr=False, compare=False)
    unfamiliar: bool = False  # unlike the training images (modeling.unfamiliar); always False without trust.npz
    unfamiliarity: float = math.nan  # the score behind it (nan without trust.npz)
    near_source: str = ""  # the training source its nearest bank image came from ("" when trust.npz records none)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def flag_reason(self) -> str:
        """Why it is flagged: ``"unfamiliar"`` (it wins when both hold), ``"low_confidence"``, or ``""``."""
        return flag_reason(self.flagged, self.unfamiliar)


@dataclass
class Prepared:
    """One input read, hashed, decoded and framed (:func:`prepare`), waiting for :meth:`Classifier.finish`."""

    item: ImageInput
    sha256: str = ""
    pixels: np.ndarray | None = None
    thumb: np.ndarray | None = None
    error: str = ""
    note: str = ""


def is_flagged(confidence: float, threshold: float, unfamiliar: bool = False) -> bool:
    """Flag for human review when the calibrated confidence is below the threshold, or the image is unfamiliar."""
    return bool(confidence < threshold or unfamiliar)


#: ``flag_reason`` of a row flagged only because its whole batch was held for review: the batch looked unlike the
#: training data, as a failed quality control holds an analyzer's results (``reports.tables.hold_frame``,
#: ``reports.results_file.hold_results``). A prediction itself never carries it.
BATCH_SHIFT = "batch_shift"


def flag_reason(flagged: bool, unfamiliar: bool) -> str:
    """The CSV's ``flag_reason``: ``unfamiliar``, ``low_confidence`` or empty (``batch_shift`` is added by the
    batch hold, on the rows)."""
    return "unfamiliar" if unfamiliar else "low_confidence" if flagged else ""


class Classifier:
    """A loaded model. Build with :meth:`load`; cheap to call many times.

    Two backends compute the same probabilities (within 1e-4):

    - ``"litert"``: ``model.tflite`` run by the LiteRT interpreter (XNNPACK), used by
      :meth:`load` when the flat-buffer exists and its sha256 (and the ``model.keras``
      it was exported from) match the model card. TensorFlow is never imported.
    - ``"keras"``: ``model.keras`` under TensorFlow; the fallback when there is no
      usable flat-buffer (a mismatching one is ignored with a warning in the log).

    :attr:`network` (the Keras model, for Grad-CAM and training) is loaded on first use.

    :attr:`trust`: the unfamiliar-cell statistics (``trust.npz`` beside the model, fitted by ``fit-trust``),
    or ``None``: then every prediction's ``unfamiliar`` is false. Both backends also return the pooled
    features from the same forward pass (:meth:`proba_and_features`) that the score needs.
    """

    def __init__(
        self,
        network,
        card: persistence.ModelCard,
        model_dir: Path | None = None,
        batch_size: int = 32,
        runtime=None,
        trust: unfamiliar.TrustModel | None = None,
    ):
        self._network = network
        self.trust = trust
        self.card = card
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.classes_ = list(card.classes)
        self.input_size = int(card.input_size)
        self.framing = card.framing
        self._runtime = runtime  # a callable float32 [n, S, S, 3] -> probabilities (LiteRT), or None for Keras
        self._fn = None  # the Keras backend's (tf.function, whether it returns features), built on first use

    @classmethod
    def load(cls, model_dir: str | Path | None = None, batch_size: int = 32, backend: str = "auto") -> Classifier:
        """Load a model directory; raises :class:`persistence.ModelError` with a plain reason.

        ``backend``: ``"auto"`` (LiteRT when usable, else Keras), ``"litert"`` (error if not usable) or ``"keras"``.
        """
        if backend not in ("auto", "litert", "keras"):
            raise ValueError(f"backend must be auto, litert or keras (got {backend!r})")
        path = default_model_dir(model_dir)
        card = persistence.load_card(path)
        trust = unfamiliar.load(path, card.model_sha256)
        if backend != "keras":
            ok, why = litert.usable(path, card)
            if ok:
                try:
                    runtime = litert.LiteRTRuntime(path / persistence.LITERT_FILE)
                except Exception as exc:  # a flat-buffer the interpreter refuses
                    ok, why = False, f"cannot load {persistence.LITERT_FILE} ({type(exc).__name__}: {exc})"
                else:
                    if trust is None or runtime.has_features or backend == "litert":
                        served = trust if runtime.has_features else None
                        return cls(None, card, path, batch_size, runtime=runtime, trust=served)
                    ok, why = False, "it has no features output for the unfamiliar-cell score (re-run export-litert)"
            if backend == "litert":
                raise persistence.ModelError(f"LiteRT backend not usable for {path}: {why}")
            if (path / persistence.LITERT_FILE).is_file():
                logging.getLogger(__name__).warning(
                    "not using %s: %s; falling back to Keras", path / persistence.LITERT_FILE, why
                )
        return cls(persistence.load_keras_model(path, card), card, path, batch_size, trust=trust)

    @property
    def backend(self) -> str:
        """``"litert"`` or ``"keras"``: what :meth:`_forward` runs."""
        return "keras" if self._runtime is None else "litert"

    @property
    def network(self):
        """The Keras model (loaded from ``model.keras`` on first use when serving from LiteRT)."""
        if self._network is None:
            if self.model_dir is None:
                raise persistence.ModelError("no Keras network and no model directory to load it from")
            self._network = persistence.load_keras_model(self.model_dir, self.card)
        return self._network

    @network.setter
    def network(self, value) -> None:
        self._network = value
        self._fn = None

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def default_threshold(self) -> float:
        """The card's review threshold as it is in force everywhere (rounded as the dashboard shows it)."""
        return round_threshold(self.card.default_threshold)

    # ------------------------------------------------------------------ arrays

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a float32 batch ``[n, S, S, 3]`` (RGB 0..255)."""
        return self._forward_both(batch)[0]

    def _forward_both(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and pooled features (``None`` where the backend has none) from one forward pass:
        the one place backends plug in."""
        if self._runtime is not None:
            if getattr(self._runtime, "has_features", False):
                probs, feats = self._runtime.run_both(batch)
                return np.asarray(probs, dtype=np.float64), np.asarray(feats, dtype=np.float32)
            return np.asarray(self._runtime(batch), dtype=np.float64), None
        if self._fn is None:
            # only the Keras backend needs TensorFlow; LiteRT serving never imports it
            import keras
            import tensorflow as tf

            net = self.network
            has_features = any(layer.name == FEATURES_LAYER for layer in net.layers)
            pooled = net.get_layer(FEATURES_LAYER).output if has_features else net.output
            both = keras.Model(net.input, [net.output, pooled])
            spec = tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.float32)
            self._fn = (tf.function(lambda x: both(x, training=False), input_signature=[spec]), has_features)
        fn, has_features = self._fn
        probs, feats = fn(batch)
        return np.asarray(probs, dtype=np.float64), (np.asarray(feats, dtype=np.float32) if has_features else None)

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities, shape ``(n, n_classes)``, for RGB uint8 arrays of any size."""
        return self.proba_and_features(images)[0]

    def proba_and_features(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities ``(n, n_classes)`` and pooled penultimate features ``(n, F)`` (``None`` when the
        backend serves probabilities only) for RGB uint8 arrays of any size, from one forward pass each."""
        probs, feats = [], []
        for b in range(0, len(images), self.batch_size):
            chunk = [model_input(im, self.input_size, self.framing) for im in images[b:b + self.batch_size]]
            p, f = self._forward_both(np.stack(chunk).astype(np.float32))
            probs.append(p)
            feats.append(f)
        if not probs:
            return np.zeros((0, len(self.classes_))), None
        return np.concatenate(probs), (None if any(f is None for f in feats) else np.concatenate(feats))

    def unfamiliarity(self, probs: np.ndarray, feats: np.ndarray | None) -> np.ndarray | None:
        """Unfamiliarity scores for a batch, or ``None`` without trust statistics or features."""
        if self.trust is None or feats is None or not len(probs):
            return None
        return self.trust.score(feats, probs)

    def predict_cells(self, images: Sequence[np.ndarray], threshold: float) -> list[Prediction]:
        """One :class:`Prediction` per RGB array (no file name, hash or thumbnail): class, confidence, flag and
        unfamiliarity as :meth:`classify` gives them, for crops a caller cut (a smear field's cells)."""
        probs, feats = self.proba_and_features(images)
        return self._predictions(probs, self.unfamiliarity(probs, feats), threshold, self._near_sources(feats))

    def _near_sources(self, feats: np.ndarray | None) -> np.ndarray | None:
        """Each image's nearest training source (the batch rule's source-matched reference), when known."""
        return None if self.trust is None or feats is None else self.trust.nearest_source(feats)

    def _predictions(
        self, probs: np.ndarray, scores: np.ndarray | None, threshold: float, sources: np.ndarray | None = None
    ) -> list[Prediction]:
        out = []
        for k, row in enumerate(probs):
            j = int(row.argmax())
            conf = float(row[j])
            odd = bool(scores is not None and self.trust is not None and self.trust.unfamiliar(scores[k]))
            out.append(
                Prediction(
                    "",
                    self.classes_[j],
                    conf,
                    tuple(float(v) for v in row),
                    is_flagged(conf, threshold, odd),
                    unfamiliar=odd,
                    unfamiliarity=math.nan if scores is None else float(scores[k]),
                    near_source="" if sources is None else str(sources[k]),
                )
            )
        return out

    def predict(self, images: Sequence[np.ndarray]) -> list[str]:
        return [self.classes_[k] for k in self.predict_proba(images).argmax(axis=1)]

    # ------------------------------------------------------------------ inputs

    def classify(
        self,
        inputs: Iterable[ImageInput],
        threshold: float | None = None,
        *,
        limits: ImageLimits = DEFAULT_LIMITS,
        thumbnails: bool = False,
        progress: Callable[[int], None] | None = None,
        workers: int = 2,
    ) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per input, in input order; bad inputs become error rows."""
        thr = self.default_threshold if threshold is None else float(threshold)
        done = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for batch in self._pipelined(pool, inputs, thr, limits, thumbnails):
                for p in batch:
                    done += 1
                    if progress:
                        progress(done)
                    yield p

    def _pipelined(
        self, pool, inputs: Iterable[ImageInput], threshold: float, limits: ImageLimits, thumbnails: bool
    ) -> Iterator[list[Prediction]]:
        """Finished batches, in order; the next batch decodes in ``pool`` while this one runs through the network."""
        pending: deque[list] = deque()
        for chunk in chunks(inputs, self.batch_size):
            pending.append(
                [pool.submit(prepare, it, self.input_size, self.framing, limits, thumbnails) for it in chunk]
            )
            if len(pending) > 1:
                yield self.finish([f.result() for f in pending.popleft()], threshold)
        while pending:
            yield self.finish([f.result() for f in pending.popleft()], threshold)

    def finish(self, prepared: list[Prepared], threshold: float) -> list[Prediction]:
        """One forward pass over the prepared inputs that decoded; a :class:`Prediction` for each, in order.

        Public so that another engine (``serving.ray_engine``: :func:`prepare` in Ray tasks, this in an actor)
        computes the same rows."""
        good = [p for p in prepared if p.pixels is not None]
        preds: list[Prediction] = []
        if good:
            probs, feats = self._forward_both(np.stack([p.pixels for p in good]).astype(np.float32))
            preds = self._predictions(probs, self.unfamiliarity(probs, feats), threshold, self._near_sources(feats))
        out, k = [], 0
        for p in prepared:
            if p.pixels is None:
                out.append(Prediction(p.item.name, error=p.error or "unreadable", sha256=p.sha256, note=p.note))
                continue
            out.append(replace(preds[k], file=p.item.name, sha256=p.sha256, note=p.note, thumbnail=p.thumb))
            k += 1
        return out


def chunks(items: Iterable, n: int) -> Iterator[list]:
    """``items`` in lists of ``n`` (the last one shorter), consumed lazily: a stream of inputs stays a stream."""
    chunk: list = []
    for it in items:
        chunk.append(it)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


#: Side (px) of the results table's thumbnails.
TABLE_THUMB_SIDE = 72


def prepare(item: ImageInput, size: int, framing: str, limits: ImageLimits, thumbnails: bool) -> Prepared:
    """Read, hash, decode and frame one input in a worker thread; never raises."""
    got = load_input(item, limits)
    dec = got.decoded
    if dec is None:
        return Prepared(item, got.sha256, error=got.error)
    sha = got.sha256
    pixels = model_input(dec.rgb, size, framing)
    # The table's thumbnail is what the network saw (the framed cell), not the whole field.
    return Prepared(item, sha, pixels, thumbnail(pixels, TABLE_THUMB_SIDE) if thumbnails else None, note=dec.note)
