"""Serve from a LiteRT (TensorFlow Lite) flat-buffer exported beside the Keras model.

``export_litert(model_dir)`` converts ``model.keras`` to ``model.tflite``: float32,
no quantisation, input ``[1, S, S, 3]`` (``S`` = the card's ``input_size``), RGB 0..255 in,
calibrated probabilities out -- the same contract
as the Keras model once images are resized with :func:`imaging.resize_for_model` -- and, as a second
output, the pooled penultimate features (layer ``pool``) that the unfamiliar-cell score reads
(:attr:`LiteRTRuntime.has_features`, :meth:`LiteRTRuntime.run_both`; flat-buffers exported before that
have the probabilities only, and are still served).
It then checks the flat-buffer against the Keras model on a set of images and
records in ``model_card.json`` (field ``litert``)::

    {"file": "model.tflite", "sha256": ..., "keras_sha256": <the model.keras it came from>,
     "input_shape": [1, S, S, 3], "max_abs_diff": ..., "tolerance": 1e-4,
     "n_check_images": ..., "created": ..., "libraries": {...}}

:class:`LiteRTRuntime` runs the flat-buffer with ``ai_edge_litert``'s interpreter
(XNNPACK, ``num_threads=2``); importing this module and running the runtime never
imports TensorFlow or Keras. Only export/check import them.

Why a fixed batch of one: measured on the 224 px MobileNetV2 with 2 XNNPACK threads
(2-core machine, docs/performance.md), a batch-1 flat-buffer invoked once per image ran
~290 images/s, against ~230 for a dynamic-batch one invoked with batches of 32 (the
activations of a large batch fall out of cache), and a dynamic batch also pays ~0.15 s
to re-plan whenever the batch size changes (the last, short batch of every run).
:class:`LiteRTRuntime` still runs a dynamic-batch flat-buffer if given one.

Why two single-threaded interpreters rather than one with two threads: XNNPACK's
worker threads spin while they wait for each other, and on a 2-core machine they
spin against the image-decoding threads. Two independent interpreters, each
running half of a batch on one thread, never wait for each other. Measured
(docs/performance.md): ~20% faster with the 224 px model; within 5% either way
with the 192 px model on a quiet machine.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata as md
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..config import data_root
from ..data import datasets as ds
from ..data import layout
from ..imaging.decode import read_rgb
from ..imaging.framing import model_input
from ..imaging.limits import env_int
from ..modeling import persistence
from ..modeling.persistence import LITERT_FILE, ModelError

log = logging.getLogger(__name__)

#: The Keras layer exported as the flat-buffer's second output (pooled penultimate features, for the
#: unfamiliar-cell score: modeling.unfamiliar).
FEATURES_LAYER = "pool"
#: Largest allowed max-abs difference between LiteRT and Keras probabilities.
TOLERANCE = 1e-4
#: Batch dimension of the exported flat-buffer (``None`` would export a dynamic batch).
EXPORT_BATCH = 1
#: XNNPACK threads; ``$HEMATOVISION_LITERT_THREADS`` overrides (on a 2-core machine shared with other
#: busy processes, 1 thread left more room for the image decoders: ~115 vs ~100 images/s end to end).
DEFAULT_THREADS = 2
THREADS_ENV = "HEMATOVISION_LITERT_THREADS"
#: Independent interpreters that split each batch (threads are divided between them);
#: ``$HEMATOVISION_LITERT_PARALLEL`` overrides. Default: one per thread for a batch-1 flat-buffer.
PARALLEL_ENV = "HEMATOVISION_LITERT_PARALLEL"


@contextlib.contextmanager
def _native_stderr_quiet():
    """Silence file descriptor 2 while the interpreter is built: its native runtime logs an INFO line
    there on every start, which the CLI's users took for a problem. Errors still raise in Python;
    ``HEMATOVISION_LITERT_VERBOSE=1`` keeps the native log."""
    if os.environ.get("HEMATOVISION_LITERT_VERBOSE"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


class LiteRTRuntime:
    """A LiteRT interpreter mapping a float32 batch ``[n, S, S, 3]`` to probabilities ``[n, C]``.

    The interpreter is not thread-safe, so calls are serialised with a lock (the
    dashboard may share one :class:`~hematovision.serving.classifier.Classifier` between sessions).
    """

    def __init__(self, model_path: str | Path, num_threads: int | None = None, parallel: int | None = None):
        num_threads = env_int(THREADS_ENV, DEFAULT_THREADS, 1) if num_threads is None else max(1, int(num_threads))
        self.model_path = Path(model_path)
        self._interp = self._new_interpreter(num_threads)
        inp = self._interp.get_input_details()[0]
        self._in = inp["index"]
        self._out, self._feat = _output_indices(self._interp.get_output_details())
        self.input_shape = tuple(int(v) for v in inp["shape_signature"])  # -1 for a dynamic batch
        self._batch = int(inp["shape"][0])
        if parallel is None:
            parallel = env_int(PARALLEL_ENV, num_threads, 1) if self.input_shape[0] != -1 else 1
        self.parallel = max(1, min(int(parallel), num_threads)) if self.input_shape[0] != -1 else 1
        self.num_threads = num_threads
        if self.parallel > 1:  # re-create the first one with its share of the threads
            self._interp = self._new_interpreter(max(1, num_threads // self.parallel))
        self._extra: list = []  # the other interpreters, created on the first batch that needs them
        self._pool = None
        self._lock = threading.Lock()

    def _new_interpreter(self, threads: int):
        # The interpreter loads its native runtime: imported only when a flat-buffer is served.
        from ai_edge_litert.interpreter import Interpreter

        with _native_stderr_quiet():  # the runtime's C++ "INFO: Created TensorFlow Lite XNNPACK delegate" line
            interp = Interpreter(model_path=str(self.model_path), num_threads=threads)
            interp.allocate_tensors()
        return interp

    @property
    def input_size(self) -> int:
        return self.input_shape[1]

    def _run_fixed(self, interp, batch: np.ndarray) -> np.ndarray:
        """A fixed-batch flat-buffer over ``batch`` in slices of its batch size, padding the last one."""
        return self._stack(_invoke_in_slices(interp, self._in, batch, self._batch, self._outputs))

    def _outputs(self, interp, m: int):
        probs = interp.get_tensor(self._out)[:m].copy()
        return probs if self._feat is None else (probs, interp.get_tensor(self._feat)[:m].copy())

    def _stack(self, parts: list):
        if self._feat is None:
            return np.concatenate(parts)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    @property
    def has_features(self) -> bool:
        """Whether the flat-buffer also emits the pooled penultimate features (exports since issue 19)."""
        return self._feat is not None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``[n, C]``."""
        out = self._run(batch)
        return out if self._feat is None else out[0]

    def run_both(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``[n, C]`` and pooled features ``[n, F]`` from one invocation (needs :attr:`has_features`)."""
        if self._feat is None:
            raise ValueError(f"{self.model_path} has no features output: re-run export-litert")
        return self._run(batch)

    def _run(self, batch: np.ndarray):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = batch.shape[0]
        if n == 0:
            probs = np.zeros((0, _width(self._interp, self._out)), np.float32)
            return probs if self._feat is None else (probs, np.zeros((0, _width(self._interp, self._feat)), np.float32))
        if batch.shape[1:] != tuple(self.input_shape[1:]):
            raise ValueError(
                f"LiteRT model expects [n, {', '.join(map(str, self.input_shape[1:]))}], got {list(batch.shape)}"
            )
        with self._lock:
            if self.input_shape[0] == -1:
                if n != self._batch:
                    self._interp.resize_tensor_input(self._in, [n, *self.input_shape[1:]], strict=True)
                    self._interp.allocate_tensors()
                    self._batch = n
                self._interp.set_tensor(self._in, batch)
                self._interp.invoke()
                return self._outputs(self._interp, n)
            ways = min(self.parallel, n)
            if ways == 1:
                return self._run_fixed(self._interp, batch)
            if len(self._extra) < self.parallel - 1:
                share = max(1, self.num_threads // self.parallel)
                self._extra = [self._new_interpreter(share) for _ in range(self.parallel - 1)]
                self._pool = ThreadPoolExecutor(self.parallel - 1, thread_name_prefix="litert")
            parts = np.array_split(batch, ways)
            futures = [self._pool.submit(self._run_fixed, interp, part) for interp, part in zip(self._extra, parts[1:])]
            first = self._run_fixed(self._interp, parts[0])
            return self._stack([first] + [f.result() for f in futures])


def _invoke_in_slices(interp, in_index: int, batch: np.ndarray, k: int, read: Callable) -> list:
    """Run ``batch`` through ``interp`` ``k`` images at a time (its fixed batch), padding the last slice with zeros;
    ``read(interp, m)`` takes each slice's outputs, its first ``m`` rows. One entry per slice."""
    out = []
    for b in range(0, batch.shape[0], k):
        part = batch[b:b + k]
        m = part.shape[0]
        if m < k:
            part = np.concatenate([part, np.zeros((k - m, *part.shape[1:]), np.float32)])
        interp.set_tensor(in_index, part)
        interp.invoke()  # releases the GIL: interpreters run truly in parallel
        out.append(read(interp, m))
    return out


def _width(interp, index: int) -> int:
    return int(next(d["shape"] for d in interp.get_output_details() if d["index"] == index)[-1])


def _output_indices(details: list[dict]) -> tuple[int, int | None]:
    """``(probabilities, features or None)`` tensor indices: with two outputs, the features are the wider one
    (1280 pooled features against a handful of classes; :func:`convert` checks that they differ)."""
    if len(details) == 1:
        return details[0]["index"], None
    if len(details) != 2:
        raise ValueError(f"expected 1 or 2 outputs, found {len(details)}")
    a, b = sorted(details, key=lambda d: int(d["shape"][-1]))
    if int(a["shape"][-1]) == int(b["shape"][-1]):
        raise ValueError("cannot tell the probabilities from the features: both outputs have the same width")
    return a["index"], b["index"]


def usable(model_dir: Path, card: persistence.ModelCard) -> tuple[bool, str]:
    """Whether ``model.tflite`` can be served for this card, and if not, why (for the log)."""
    path = Path(model_dir) / LITERT_FILE
    if not path.is_file():
        return False, f"no {LITERT_FILE}"
    rec = card.litert or {}
    if not rec.get("sha256"):
        return (
            False,
            f"{LITERT_FILE} is not recorded in the model card (run: python -m hematovision export-litert --model "
            f"{model_dir})",
        )
    if card.model_sha256 and rec.get("keras_sha256") != card.model_sha256:
        return False, f"{LITERT_FILE} was exported from a different model.keras (re-run export-litert)"
    if persistence.sha256_of(path) != rec["sha256"]:
        return (
            False,
            f"{LITERT_FILE} does not match the sha256 in the model card (corrupt or replaced; re-run export-litert)",
        )
    if not rec.get("max_abs_diff", np.inf) <= rec.get("tolerance", TOLERANCE):
        return False, f"{LITERT_FILE} failed its check against Keras (max abs diff {rec.get('max_abs_diff')})"
    return True, ""


# ---------------------------------------------------------------------- export


def convert(network, input_size: int, batch: int | None = None, features: bool = True) -> bytes:
    """The flat-buffer bytes of a Keras network at a fixed ``input_size`` (float32).

    ``features``: also emit the pooled penultimate features (layer :data:`FEATURES_LAYER`) as a second
    output, so the unfamiliar-cell score comes from the same invocation as the probabilities.
    """
    # export only: the LiteRT runtime never imports TensorFlow or Keras
    import keras
    import tensorflow as tf

    spec = tf.TensorSpec([batch, input_size, input_size, 3], tf.float32, name="image")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    if features and any(layer.name == FEATURES_LAYER for layer in network.layers):
        pooled = network.get_layer(FEATURES_LAYER).output
        if int(pooled.shape[-1]) == int(network.output.shape[-1]):
            raise ModelError("the pooled features are as wide as the probabilities; cannot export both")
        both = keras.Model(network.input, [network.output, pooled])
        fn = tf.function(lambda x: tuple(both(x, training=False)), input_signature=[spec])
    else:
        fn = tf.function(lambda x: network(x, training=False), input_signature=[spec])
    # Freeze the weights into the graph first: Keras 3 variables would otherwise stay
    # resource variables in the flat-buffer, uninitialised at run time.
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    conv = tf.lite.TFLiteConverter.from_concrete_functions([frozen], network)
    conv.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS
    ]  # plain builtin ops: no Flex/TF dependency at runtime
    return conv.convert()


def keras_probabilities(network, batch: np.ndarray, chunk: int = 32) -> np.ndarray:
    import tensorflow as tf  # the check only: the LiteRT runtime never imports TensorFlow

    size = batch.shape[1]
    fn = tf.function(
        lambda x: network(x, training=False), input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)]
    )
    return np.concatenate([np.asarray(fn(batch[b : b + chunk])) for b in range(0, len(batch), chunk)])


def _as_batch(images: Sequence[np.ndarray] | np.ndarray, size: int, framing: str) -> np.ndarray:
    return np.stack([model_input(np.asarray(im), size, framing) for im in images]).astype(np.float32)


def check_litert(model_dir: str | Path, images: Sequence[np.ndarray] | np.ndarray, network=None) -> float:
    """Max abs difference between LiteRT and Keras probabilities on ``images`` (RGB uint8, any size)."""
    model_dir = Path(model_dir)
    card = persistence.load_card(model_dir)
    if network is None:
        network = persistence.load_keras_model(model_dir, card)
    batch = _as_batch(images, int(card.input_size), card.framing)
    runtime = LiteRTRuntime(model_dir / LITERT_FILE)
    lite = np.concatenate([runtime(batch[b:b + 32]) for b in range(0, len(batch), 32)])
    ref = keras_probabilities(network, batch)
    return float(np.max(np.abs(lite.astype(np.float64) - ref.astype(np.float64))))


def generated_images(n: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Synthetic cell-like RGB images (a stained blob on a light field, noise, varied sizes)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = int(rng.integers(120, 300)), int(rng.integers(120, 360))
        img = rng.normal(225, 12, (h, w, 3))
        yy, xx = np.mgrid[:h, :w]
        for _ in range(int(rng.integers(1, 4))):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(10, min(h, w) // 3)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(40, 200, 3)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def check_images(
    root: Path | None = None, per_set: int = 8, model_dir: Path | None = None
) -> tuple[list[np.ndarray], str]:
    """A few real test images per test set from the data root when present, else generated ones.

    Test sets come from ``model_dir``'s split manifest when it has one (Kaggle TEST and
    PBC test as that model was split), else Kaggle TEST plus a few PBC images of any split.
    """
    root = data_root(root)
    imgs: list[np.ndarray] = []
    names = []
    try:
        manifest = Path(model_dir) / persistence.MANIFEST_FILE if model_dir else None
        if manifest is not None and manifest.is_file():
            listed = ds.read_manifest(manifest, root)
            sets = [
                (ds.TEST_SETS["kaggle_test"], ds.test_set(listed, "kaggle_test")),
                (ds.TEST_SETS["pbc_test"], ds.test_set(listed, "pbc_test")),
            ]
        else:
            sets = [
                (ds.TEST_SETS["kaggle_test"], ds.select(ds.kaggle_images(root), split="test")),
                ("PBC (any split)", _pbc_sample(root, per_set)),
            ]
        picked = []
        for name, items in sets:
            by_class: dict[str, list] = {}
            for it in items:
                if it.path.is_file():
                    by_class.setdefault(it.label, []).append(it)
            chosen = [x for cls in sorted(by_class) for x in by_class[cls][: max(1, per_set // max(1, len(by_class)))]][
                :per_set
            ]
            if chosen:
                names.append(f"{len(chosen)} {name}")
            picked += chosen
        imgs = [read_rgb(it.path) for it in picked]
    except Exception as exc:  # the data root is optional here
        log.info("no real check images (%s)", exc)
        imgs = []
    if not imgs:
        return generated_images(2 * per_set), f"{2 * per_set} generated images"
    gen = generated_images(4)
    return imgs + gen, " + ".join(names + [f"{len(gen)} generated"])


def _pbc_sample(root: Path, n: int) -> list:
    """A few PBC images per class without hashing the whole set (the test split needs every hash)."""
    out = []
    for label, _, f in layout.iter_class_folders(Path(root) / layout.PBC_DIR):
        if label is None:
            continue
        if sum(1 for o in out if o.label == label) < max(1, n // 4):
            out.append(ds.LabeledImage(f, f.relative_to(root).as_posix(), label, "pbc", "any", ""))
    return out


def export_litert(
    model_dir: str | Path,
    images: Sequence[np.ndarray] | None = None,
    images_desc: str = "",
    tolerance: float = TOLERANCE,
    network=None,
) -> dict:
    """Write ``model.tflite`` beside ``model.keras``, check it, record it in the card; returns the record.

    ``network``: the Keras model just saved as ``model.keras``, when the caller has it in memory (else loaded).
    Raises :class:`persistence.ModelError` (and removes the flat-buffer) when the
    LiteRT probabilities differ from Keras by more than ``tolerance``.
    """
    model_dir = Path(model_dir)
    card = persistence.load_card(model_dir)
    if network is None:
        network = persistence.load_keras_model(model_dir, card)
    size = int(card.input_size)
    path = model_dir / LITERT_FILE
    tmp = path.with_suffix(".tflite.tmp")
    tmp.write_bytes(convert(network, size, EXPORT_BATCH))
    tmp.replace(path)
    if images is None:
        images, images_desc = generated_images(16), "16 generated images"
    diff = check_litert(model_dir, images, network)
    if not diff <= tolerance:
        path.unlink(missing_ok=True)
        raise ModelError(f"LiteRT export of {model_dir} differs from Keras by {diff:.2e} (> {tolerance:.0e}); not kept")
    libs = {}
    for pkg in ("ai-edge-litert", "tensorflow-cpu", "tensorflow"):
        try:
            libs[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    record = {
        "file": LITERT_FILE,
        "sha256": persistence.sha256_of(path),
        "keras_sha256": card.model_sha256,
        "input_shape": [EXPORT_BATCH or -1, size, size, 3],
        "dtype": "float32",
        "outputs": ["probabilities", "features"] if LiteRTRuntime(path).has_features else ["probabilities"],
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "n_check_images": len(images),
        "check_images": images_desc or f"{len(images)} images",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "libraries": libs,
    }
    persistence.update_card(model_dir, lambda c: setattr(c, "litert", record))
    log.info("LiteRT export %s: max abs diff %.2e on %s", path, diff, record["check_images"])
    return record


class TappedRuntime:
    """A flat-buffer run on one-off passes that also returns one inner tensor: the output of the Keras layer
    ``layer`` (for the unfamiliar-cell refit's cache of activations, :mod:`hematovision.trust.refit_cache`).

    Every tensor is preserved (LiteRT's ``experimental_preserve_all_tensors``: 10-30% slower than
    :class:`LiteRTRuntime`), so it is never used for serving. ``parallel`` single-threaded interpreters each run
    a share of a batch, as :class:`LiteRTRuntime` does. Raises :class:`ModelError` when the flat-buffer has no
    features output or no tensor of that layer."""

    def __init__(self, model_path: str | Path, layer: str, parallel: int = 2):
        import warnings

        # The interpreter loads its native runtime: imported only when a flat-buffer runs.
        from ai_edge_litert.interpreter import Interpreter

        self.model_path = Path(model_path)
        self._interps = []
        for _ in range(max(1, int(parallel))):
            with _native_stderr_quiet(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "preserve_all_tensors is intended for debugging"
                interp = Interpreter(model_path=str(self.model_path), num_threads=1,
                                     experimental_preserve_all_tensors=True)
                interp.allocate_tensors()
            self._interps.append(interp)
        first = self._interps[0]
        inp = first.get_input_details()[0]
        self._in, self._batch = inp["index"], int(inp["shape"][0])
        self.input_shape = tuple(int(v) for v in inp["shape_signature"])
        self._out, self._feat = _output_indices(first.get_output_details())
        if self._feat is None:
            raise ModelError(f"{self.model_path} has no features output")
        # the converter names a layer's tensor ".../<layer>_1/<Op>" or ".../<layer>/<Op>", and a fused op's output
        # after every op it holds ("a;b"): exactly one tensor must name the layer
        def named(name: str) -> bool:
            return any(f"/{layer}{s}/" in part for part in name.split(";") for s in ("", "_1"))

        mine = [d for d in first.get_tensor_details() if named(d["name"])]
        if len(mine) != 1:
            raise ModelError(f"{self.model_path}: {len(mine)} tensors named after layer {layer}, expected one")
        self._tap = mine[0]["index"]
        self._pool = ThreadPoolExecutor(len(self._interps) - 1) if len(self._interps) > 1 else None

    def _one(self, interp, part: np.ndarray):
        if self.input_shape[0] == -1:
            interp.resize_tensor_input(self._in, list(part.shape), strict=True)
            interp.allocate_tensors()
            k = len(part)
        else:
            k = self._batch
        out = _invoke_in_slices(interp, self._in, part, k,
                                lambda it, m: [it.get_tensor(i)[:m].copy() for i in (self._out, self._feat, self._tap)])
        return [np.concatenate([o[j] for o in out]) for j in range(3)]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(probabilities, pooled features, the layer's output)`` of a float32 batch ``[n, S, S, 3]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = [p for p in np.array_split(batch, min(len(self._interps), max(1, len(batch)))) if len(p)]
        futures = [self._pool.submit(self._one, it, p) for it, p in zip(self._interps[1:], parts[1:])]
        done = [self._one(self._interps[0], parts[0])] + [f.result() for f in futures]
        probs, feats, taps = (np.concatenate([d[j] for d in done]) for j in range(3))
        return probs, feats, taps
