"""Classify images with a saved model: batch in, typed results out, in input order.

``Classifier`` follows scikit-learn's conventions (``classes_``,
``predict_proba``) and Hugging Face's pipeline shape (``classify`` takes a batch
of inputs and yields one :class:`Prediction` per input). Images are decoded in
worker threads while the previous batch runs through the network, a fixed
number of images at a time, so memory stays bounded for any number of inputs.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import model_dir as default_model_dir
from ..imaging.decode import ImageError, decode_image, thumbnail
from ..imaging.framing import model_input
from ..imaging.limits import DEFAULT_LIMITS, ImageLimits
from ..imaging.sources import ImageInput
from ..modeling import persistence
from . import litert


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

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class Prepared:
    """One input read, hashed, decoded and framed (:func:`prepare`), waiting for :meth:`Classifier.finish`."""

    item: ImageInput
    sha256: str = ""
    pixels: np.ndarray | None = None
    thumb: np.ndarray | None = None
    error: str = ""
    note: str = ""


def is_flagged(confidence: float, threshold: float) -> bool:
    """Flag for human review when the calibrated confidence is below the threshold."""
    return bool(confidence < threshold)


class Classifier:
    """A loaded model. Build with :meth:`load`; cheap to call many times.

    Two backends compute the same probabilities (within 1e-4):

    - ``"litert"``: ``model.tflite`` run by the LiteRT interpreter (XNNPACK), used by
      :meth:`load` when the flat-buffer exists and its sha256 (and the ``model.keras``
      it was exported from) match the model card. TensorFlow is never imported.
    - ``"keras"``: ``model.keras`` under TensorFlow; the fallback when there is no
      usable flat-buffer (a mismatching one is ignored with a warning in the log).

    :attr:`network` (the Keras model, for Grad-CAM and training) is loaded on first use.
    """

    def __init__(
        self, network, card: persistence.ModelCard, model_dir: Path | None = None, batch_size: int = 32, runtime=None
    ):
        self._network = network
        self.card = card
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.classes_ = list(card.classes)
        self.input_size = int(card.input_size)
        self.framing = card.framing
        self._runtime = runtime  # a callable float32 [n, S, S, 3] -> probabilities (LiteRT), or None for Keras
        self._fn = None

    @classmethod
    def load(cls, model_dir: str | Path | None = None, batch_size: int = 32, backend: str = "auto") -> Classifier:
        """Load a model directory; raises :class:`persistence.ModelError` with a plain reason.

        ``backend``: ``"auto"`` (LiteRT when usable, else Keras), ``"litert"`` (error if not usable) or ``"keras"``.
        """
        if backend not in ("auto", "litert", "keras"):
            raise ValueError(f"backend must be auto, litert or keras (got {backend!r})")
        path = default_model_dir(model_dir)
        card = persistence.load_card(path)
        if backend != "keras":
            ok, why = litert.usable(path, card)
            if ok:
                try:
                    return cls(
                        None, card, path, batch_size, runtime=litert.LiteRTRuntime(path / persistence.LITERT_FILE)
                    )
                except Exception as exc:  # a flat-buffer the interpreter refuses
                    ok, why = False, f"cannot load {persistence.LITERT_FILE} ({type(exc).__name__}: {exc})"
            if backend == "litert":
                raise persistence.ModelError(f"LiteRT backend not usable for {path}: {why}")
            if (path / persistence.LITERT_FILE).is_file():
                logging.getLogger(__name__).warning(
                    "not using %s: %s; falling back to Keras", path / persistence.LITERT_FILE, why
                )
        return cls(persistence.load_keras_model(path, card), card, path, batch_size)

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
        return float(self.card.default_threshold)

    # ------------------------------------------------------------------ arrays

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a float32 batch ``[n, S, S, 3]`` (RGB 0..255): the one place backends plug in."""
        if self._runtime is not None:
            return np.asarray(self._runtime(batch), dtype=np.float64)
        if self._fn is None:
            import tensorflow as tf  # only the Keras backend needs TensorFlow; LiteRT serving never imports it

            net = self.network
            spec = tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.float32)
            self._fn = tf.function(lambda x: net(x, training=False), input_signature=[spec])
        return np.asarray(self._fn(batch), dtype=np.float64)

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities, shape ``(n, n_classes)``, for RGB uint8 arrays of any size."""
        out = []
        for b in range(0, len(images), self.batch_size):
            chunk = [model_input(im, self.input_size, self.framing) for im in images[b:b + self.batch_size]]
            out.append(self._forward(np.stack(chunk).astype(np.float32)))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)))

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
        probs = self._forward(np.stack([p.pixels for p in good]).astype(np.float32)) if good else None
        out, k = [], 0
        for p in prepared:
            if p.pixels is None:
                out.append(Prediction(p.item.name, error=p.error or "unreadable", sha256=p.sha256, note=p.note))
                continue
            row = probs[k]
            k += 1
            j = int(row.argmax())
            conf = float(row[j])
            out.append(
                Prediction(
                    p.item.name,
                    self.classes_[j],
                    conf,
                    tuple(float(v) for v in row),
                    is_flagged(conf, threshold),
                    "",
                    p.sha256,
                    p.note,
                    p.thumb,
                )
            )
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
    if item.error:
        return Prepared(item, error=item.error)
    try:
        data = item.read()
    except ImageError as exc:  # a reason already worded for the user (e.g. a damaged zip member)
        return Prepared(item, error=str(exc))
    except Exception as exc:  # a vanished file, a damaged zip member
        return Prepared(item, error=f"cannot read ({type(exc).__name__}: {exc})")
    sha = hashlib.sha256(data).hexdigest()
    try:
        dec = decode_image(data, limits)
    except ImageError as exc:
        return Prepared(item, sha, error=str(exc))
    except Exception as exc:  # defensive: the reader must never take the batch down
        return Prepared(item, sha, error=f"could not decode ({type(exc).__name__})")
    pixels = model_input(dec.rgb, size, framing)
    # The table's thumbnail is what the network saw (the framed cell), not the whole field.
    return Prepared(item, sha, pixels, thumbnail(pixels, TABLE_THUMB_SIDE) if thumbnails else None, note=dec.note)
