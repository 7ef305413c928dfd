"""The refit after an adaptation, fast: the parent's activations below the adapted blocks, computed once.

An adaptation (:mod:`hematovision.training.adapt`, the default configuration) changes only ``block_16``,
``Conv_1`` and the head; every layer below ``block_16`` keeps the parent's weights and BatchNorm statistics.
The refit (:func:`hematovision.trust.refit_version`) passes a fixed set of images through the adapted network
(its training bank and validation images, drawn with fixed seeds from the parent's split manifest, and the
outlier bank), so their activations at :data:`CUT_LAYER` (the input of ``block_16``, 6 x 6 x 160 at 192 px)
are the same for every adaptation of one parent. They are computed once (decoding, framing and the network's
bottom: about 85% of its multiply-adds) and kept on disk as float16 in :func:`cache_dir`; a refit then runs only
the network's top on them.

The key (:func:`cache_key`) is a hash of the bottom's own weights (so an adaptation that re-estimated BatchNorm
statistics, or fine-tuned lower blocks, never reads another network's activations), the cut, the input size,
the framing and its revision, and the images (manifest paths and hashes, transforms, the BCCD files the
outlier crops are cut from). A damaged, stale or absent cache is computed again; a cache that cannot be written
costs only the time. At most :data:`KEEP` caches are kept (the least recently used go first).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import user_data_dir
from ..imaging.framing import FRAMING_REVISION, model_input
from ..serving.litert import TappedRuntime

log = logging.getLogger("hematovision.trust")

#: The cached layer: the input of ``block_16`` (the lowest block an adaptation fine-tunes by default).
CUT_LAYER = "block_15_add"
FEATURES_LAYER = "pool"
#: Bump when what the cache holds changes.
FORMAT = 1
#: Caches kept in :func:`cache_dir` (about 40 MB each for the refit's ~3,400 images).
KEEP = 2
BATCH = 64


def cache_dir() -> Path:
    """Where refit caches live: ``user_data_dir()/cache/refit`` (never inside the repository)."""
    return user_data_dir() / "cache" / "refit"


@dataclass(frozen=True)
class Group:
    """Images the refit passes through the network, under one name.

    ``ident``: what identifies them for the cache key (paths and hashes, the transform); ``items``: called on a
    miss only (the BCCD crops are cut from their fields then); ``load(item, k)``: the ``k``-th item as an RGB
    array (an exception skips it, with a log line)."""

    name: str
    ident: tuple[str, ...]
    items: Callable[[], Sequence]
    load: Callable[[object, int], np.ndarray]


def _cut(network):
    """:data:`CUT_LAYER`'s output, or (a network without it, such as the tests' tiny one) the pool's input."""
    if any(layer.name == CUT_LAYER for layer in network.layers):
        return network.get_layer(CUT_LAYER).output
    return network.get_layer(FEATURES_LAYER).input


def cut_name(network) -> str:
    """The name of the layer whose output is cached (see :func:`_cut`)."""
    cut = _cut(network)
    return next(layer.name for layer in network.layers if layer.output is cut)


def split(network):
    """``(bottom, top)``: images -> activations at the cut; activations -> ``(probabilities, pooled features)``.
    Both share their layers with ``network``."""
    import keras  # TensorFlow-class library: imported only when a network runs

    cut = _cut(network)
    bottom = keras.Model(network.input, cut, name="refit_bottom")
    top = keras.Model(cut, [network.output, network.get_layer(FEATURES_LAYER).output], name="refit_top")
    return bottom, top


def fingerprint(bottom) -> str:
    """sha256 of the bottom's weights (BatchNorm statistics included), in layer order."""
    h = hashlib.sha256()
    for w in bottom.weights:
        a = np.ascontiguousarray(np.asarray(w.numpy()))
        h.update(f"{w.path}:{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(bottom_sha: str, cut: str, input_size: int, framing: str, groups: Sequence[Group]) -> str:
    h = hashlib.sha256()
    head = {"format": FORMAT, "bottom": bottom_sha, "cut": cut, "size": int(input_size), "framing": framing,
            "framing_revision": FRAMING_REVISION}
    h.update(json.dumps(head, sort_keys=True).encode())
    for g in groups:
        h.update(f"\n[{g.name}]\n".encode())
        h.update("\n".join(g.ident).encode())
    return h.hexdigest()


def _framed(group: Group, items: Sequence, size: int, framing: str, ahead: int = 2 * BATCH) -> Iterator[np.ndarray]:
    """The group's images, framed for the network, read and framed two at a time in threads (at most ``ahead``
    waiting); an item that cannot be read is skipped with a log line."""

    def one(k_item):
        k, item = k_item
        try:
            return model_input(group.load(item, k), size, framing)
        except Exception as exc:  # a vanished or damaged file must not stop the refit
            log.warning("skipping an image of %s (%s)", group.name, exc)
            return None

    todo = iter(enumerate(items))
    with ThreadPoolExecutor(2) as pool:
        waiting = deque(pool.submit(one, x) for x in itertools.islice(todo, ahead))
        while waiting:
            x = waiting.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                waiting.append(pool.submit(one, nxt))
            if x is not None:
                yield x


def _chunks(xs: Iterator[np.ndarray], n: int) -> Iterator[np.ndarray]:
    buf: list[np.ndarray] = []
    for x in xs:
        buf.append(x)
        if len(buf) >= n:
            yield np.stack(buf).astype(np.float32)
            buf = []
    if buf:
        yield np.stack(buf).astype(np.float32)


def _as_stored(acts: np.ndarray) -> np.ndarray:
    """float16 (about three significant digits; its effect on the refit is measured in docs/trust.md) when every
    activation fits it, else float32."""
    half = acts.astype(np.float16)
    return half if np.isfinite(half).all() else acts.astype(np.float32)


def _load(path: Path, names: Sequence[str], shape: tuple) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {n: z[f"acts_{k}"] for k, n in enumerate(names)}
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged cache is computed again
        log.warning("ignoring the refit cache %s (%s: %s)", path, type(exc).__name__, exc)
        return None
    if any(a.ndim != 1 + len(shape) or tuple(a.shape[1:]) != shape for a in out.values()):
        log.warning("ignoring the refit cache %s: activations of another shape", path)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: kept
    return out


def _save(path: Path, acts: dict[str, np.ndarray]) -> bool:
    # two refits at once never share one: other processes, or a refit beside the dashboard's warm-up thread
    tmp = path.with_name(f"{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **{f"acts_{k}": a for k, a in enumerate(acts.values())})
        tmp.replace(path)
    except OSError as exc:  # a full or read-only disk: the refit goes on without a cache
        log.warning("refit cache not written to %s (%s)", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    with contextlib.suppress(OSError):  # another refit may be pruning too
        old = sorted(path.parent.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for p in [p for p in old if p != path][KEEP - 1:]:
            p.unlink(missing_ok=True)
    return True


@dataclass
class RefitFeatures:
    """Each group's ``(probabilities, pooled features)`` through the network, and where they came from."""

    groups: dict[str, tuple[np.ndarray, np.ndarray]]
    cache: str  # "read", "written", "not written" or "not used"
    path: Path | None
    computed_by: str  # "LiteRT" (the served flat-buffer) or "Keras"


#: The largest difference allowed between the Keras top on LiteRT's activations and LiteRT's own outputs on a first
#: batch (probabilities; features relative to their largest value) before LiteRT's activations are cached.
TAP_TOLERANCE = 1e-3


def _top_runner(top, shape: tuple):
    import tensorflow as tf  # TensorFlow-class library: imported only when a network runs

    spec = tf.TensorSpec([None, *shape], tf.float32)
    fn = tf.function(lambda x: tuple(top(x, training=False)), input_signature=[spec])
    widths = [int(o.shape[-1]) for o in top.outputs]

    def run(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, feats = [], []
        for start in range(0, len(acts), 4 * BATCH):
            p, f = fn(np.asarray(acts[start:start + 4 * BATCH], np.float32))
            probs.append(np.asarray(p, np.float64))
            feats.append(np.asarray(f, np.float32))
        if not probs:
            return np.zeros((0, widths[0])), np.zeros((0, widths[1]), np.float32)
        return np.concatenate(probs), np.concatenate(feats)

    return run


def _tap(litert_path: Path | None, layer: str, top, first: np.ndarray):
    """A :class:`~hematovision.serving.litert.TappedRuntime` whose activations the Keras ``top`` agrees with on
    the ``first`` batch, or ``None`` (no usable flat-buffer: the Keras bottom computes them)."""
    if litert_path is None or not Path(litert_path).is_file():
        return None
    try:
        runtime = TappedRuntime(litert_path, layer)
        probs, feats, acts = runtime.run(first)
    except Exception as exc:  # an old or foreign flat-buffer: Keras computes the activations
        log.info("refit activations through Keras (%s)", exc)
        return None
    kp, kf = _top_runner(top, tuple(acts.shape[1:]))(acts)
    dp = float(np.max(np.abs(kp - probs))) if len(probs) else 0.0
    df = float(np.max(np.abs(kf - feats)) / max(float(np.max(np.abs(feats))), 1e-6)) if len(feats) else 0.0
    if not (dp <= TAP_TOLERANCE and df <= TAP_TOLERANCE):
        log.warning("%s's %s activations disagree with the Keras network (%.1e, %.1e); through Keras", litert_path,
                    layer, dp, df)
        return None
    return runtime


def features(
    network,
    input_size: int,
    framing: str,
    groups: Sequence[Group],
    directory: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    litert_path: Path | None = None,
) -> RefitFeatures:
    """Probabilities and pooled features of each group through ``network``.

    From the cache in ``directory`` when it holds this bottom's activations of these images: the Keras top on
    them. Else computed, and written there (``directory=None``: never cached): by the served flat-buffer
    ``litert_path`` (its outputs, as the served model gives them, and its activations at the cut, checked against
    the Keras top on the first batch), or where there is none by the Keras network's bottom and top."""
    import tensorflow as tf  # TensorFlow-class library: imported only when a network runs

    bottom, top = split(network)
    shape = tuple(int(d) for d in bottom.output.shape[1:])
    names = [g.name for g in groups]
    path = None
    acts = None
    if directory is not None:
        key = cache_key(fingerprint(bottom), cut_name(network), input_size, framing, groups)
        path = Path(directory) / f"{key[:32]}.npz"
        acts = _load(path, names, shape)
    run_top = _top_runner(top, shape)
    if acts is not None:
        out = {}
        for name, a in acts.items():
            out[name] = run_top(a)
            if progress:
                progress(name, len(a), len(a))
        return RefitFeatures(out, "read", path, "Keras")

    spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32)
    run_bottom = tf.function(lambda x: bottom(x, training=False), input_signature=[spec])
    runtime = None
    out, acts = {}, {}
    for g in groups:
        items = list(g.items())
        probs, feats, parts, done = [], [], [], 0
        for b in _chunks(_framed(g, items, input_size, framing), BATCH):
            if runtime is None and litert_path is not None:
                runtime = _tap(litert_path, cut_name(network), top, b) or False
            if runtime:
                p, f, a = runtime.run(b)
            else:
                a = np.asarray(run_bottom(b))
                p, f = run_top(a)
            probs.append(np.asarray(p, np.float64))
            feats.append(np.asarray(f, np.float32))
            parts.append(_as_stored(a))
            done += len(b)
            if progress:
                progress(g.name, done, len(items))
        out[g.name] = (np.concatenate(probs) if probs else np.zeros((0, int(top.outputs[0].shape[-1]))),
                       np.concatenate(feats) if feats else np.zeros((0, int(top.outputs[1].shape[-1])), np.float32))
        acts[g.name] = np.concatenate(parts) if parts else np.zeros((0, *shape), np.float16)
    state = "not used" if path is None else ("written" if _save(path, acts) else "not written")
    return RefitFeatures(out, state, path, "LiteRT" if runtime else "Keras")
