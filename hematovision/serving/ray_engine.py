"""Classify on Ray Data: the batch path for archives that outgrow one machine (``classify --engine ray``).

The same steps as :meth:`Classifier.classify`, spread over a Ray cluster::

    driver      list the inputs (imaging.sources, or pyarrow for URIs) -> one row per image, numbered
    Ray tasks   read -> sha256 -> decode -> frame          (classifier.prepare, as the default engine)
    actor pool  one LiteRT interpreter per actor            (Classifier.finish: probabilities, class, flag)
    driver      Predictions back in input order (Ray Data's ``preserve_order``)

Preprocessing and probabilities are the default engine's code, so the two agree row for row; the default
engine stays the default and never imports Ray. Ray is imported inside the functions that run it (an
optional requirement, ``requirements-ray.txt``, loaded only for ``--engine ray``).

Inputs: local files, folders and zip archives exactly as :func:`imaging.sources.iter_paths` reads them
(every node must see the same paths: a shared file system), and URIs that pyarrow's file systems open
(``file://``, ``s3://``, ``gs://``, ``hdfs://``): a file, or a folder walked recursively for image
extensions. A zip archive at a URI is an error row (read zips from a local or shared path). The model
directory is read on the driver and shipped to the actors through Ray's object store.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import model_dir as default_model_dir
from ..imaging.decode import ImageError
from ..imaging.limits import DEFAULT_LIMITS, ImageLimits, too_large_reason
from ..imaging.sources import (
    ARCHIVE_EXTENSIONS,
    IMAGE_EXTENSIONS,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    ZIP_MAGIC,
    ImageInput,
    display_name,
    inputs_of_file,
    list_files,
)
from ..modeling import TRUST_FILE, persistence
from . import litert
from .classifier import Classifier, Prediction, Prepared, prepare

#: Memory (bytes) each decode task reserves with Ray's scheduler.
DECODE_TASK_MEMORY = 512 * 1024 ** 2
#: Ray's switch between the machine's network address (on Linux by default) and loopback for a local cluster.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: URIs name their file system (``s3://bucket/x``); anything else is a local path.
URI_MARK = "://"


class RayEngineError(ValueError):
    """Options the cluster cannot run (one line for the user)."""


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray. ``address``: join that cluster (``auto``, ``ray://host:10001``, ``host:6379``);
    ``None`` starts a local one with ``num_cpus`` logical CPUs (default ``os.cpu_count()``)."""

    address: str | None = None
    num_cpus: int | None = None
    #: Inference actors (each one LiteRT interpreter); default: half the cluster's CPUs, at least 1, so that
    #: decoding keeps the other half.
    workers: int | None = None
    #: Interpreter threads per actor, and the CPUs each actor reserves.
    threads: int = 1
    batch_size: int = 32
    #: Images per decode task (one Ray Data block of the listing).
    images_per_task: int = 64


@dataclass(frozen=True)
class ModelFiles:
    """The files of a model directory that an actor needs (read on the driver, shipped to every actor)."""

    files: dict[str, bytes]

    @classmethod
    def read(cls, model_dir: Path) -> ModelFiles:
        card = persistence.load_card(model_dir)
        ok, _ = litert.usable(model_dir, card)
        names = [persistence.CARD_FILE, persistence.LITERT_FILE if ok else persistence.MODEL_FILE]
        if (model_dir / TRUST_FILE).is_file():  # the unfamiliar-cell statistics, so rows match the default engine's
            names.append(TRUST_FILE)
        return cls({n: (model_dir / n).read_bytes() for n in names})

    def write(self, folder: Path) -> Path:
        for n, data in self.files.items():
            (folder / n).write_bytes(data)
        return folder


# ---------------------------------------------------------------------- listing (driver)


def listing(
    paths: Sequence[str], skip: Callable[[str], bool] = lambda name: False
) -> Iterator[dict]:
    """One row per image the default engine would classify, in its order, minus those ``skip`` names
    (``--resume``): ``order`` (position in the whole input), ``name``, where to read it (``path`` + ``member``
    for local files and zip members, or ``uri``), and ``error`` for a row known bad before reading."""
    order = 0
    for raw in paths:
        for row in _uri_listing(raw) if URI_MARK in raw else _local_listing(raw):
            if not skip(row["name"]):
                yield {"order": order, **row}
            order += 1


def _local_listing(raw: str) -> Iterator[dict]:
    for f in list_files([raw]):
        if f.error or f.path is None:
            yield _row(f.name, error=f.error)
            continue
        # Opening a zip here reads only its central directory; each member is read by a task.
        for k, item in enumerate(inputs_of_file(f.path, f.from_folder)):
            yield _row(item.name, path=str(f.path), member=k, from_folder=f.from_folder, error=item.error)


def _uri_listing(raw: str) -> Iterator[dict]:
    from pyarrow import fs as pafs  # pyarrow's file systems (S3, GCS, HDFS) load native code: only for URIs

    try:
        filesystem, root = pafs.FileSystem.from_uri(raw)
        info = filesystem.get_file_info(root)
    except Exception as exc:  # an unknown scheme, no credentials, no network
        yield _row(display_name(raw), error=f"cannot open ({type(exc).__name__}: {exc})")
        return
    if info.type == pafs.FileType.Directory:
        base = raw.rstrip("/")
        found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        wanted = IMAGE_EXTENSIONS + UNSUPPORTED_IMAGE_EXTENSIONS + ARCHIVE_EXTENSIONS
        # Sorted by path components, as a local folder is walked (``a/x`` before ``a-b/x``).
        for f in sorted((f for f in found if f.type == pafs.FileType.File), key=lambda f: f.path.split("/")):
            rel = f.path[len(root.rstrip("/")) + 1:]
            if any(part.startswith(".") for part in rel.split("/")) or not rel.lower().endswith(wanted):
                continue  # hidden files, and files that are not images (notes, CSVs), as in a local folder
            yield _row(display_name(f"{base}/{rel}"), uri=f"{base}/{rel}")
    elif info.type == pafs.FileType.File:
        yield _row(display_name(raw), uri=raw)
    else:
        yield _row(display_name(raw), error="no such file or folder")


def _row(name: str, path: str = "", member: int = -1, from_folder: bool = False, uri: str = "", error: str = ""):
    return {"name": name, "path": path, "member": member, "from_folder": from_folder, "uri": uri, "error": error}


# ---------------------------------------------------------------------- Ray tasks: read, decode, frame


def decode_batch(batch: dict, size: int, framing: str, limits: ImageLimits) -> dict:
    """A block of listed rows -> framed pixels (uint8 ``[n, size, size, 3]``) and, per row, hash, note, error.

    Runs :func:`classifier.prepare` (the default engine's reading, decoding and framing); never raises."""
    opened: dict[tuple[str, bool], list[ImageInput]] = {}  # a zip opened once per block
    out: dict[str, list] = {k: [] for k in ("order", "name", "sha256", "note", "error", "ok")}
    pixels = []
    for i in range(len(batch["order"])):
        item = _input(batch, i, opened, limits)
        p = prepare(item, size, framing, limits, False)
        out["order"].append(int(batch["order"][i]))
        out["name"].append(item.name)
        out["sha256"].append(p.sha256)
        out["note"].append(p.note)
        out["error"].append("" if p.pixels is not None else (p.error or "unreadable"))
        out["ok"].append(p.pixels is not None)
        pixels.append(p.pixels)
    # Framed pixels as the default engine has them (uint8 from the decoder and OpenCV); zeros stand in for
    # error rows, so the column is one fixed-shape tensor.
    dtype = next((px.dtype for px in pixels if px is not None), np.dtype(np.uint8))
    blank = np.zeros((size, size, 3), dtype)
    cols = {k: np.asarray(v, dtype=object) for k, v in out.items() if k not in ("order", "ok")}
    cols["order"] = np.asarray(out["order"], dtype=np.int64)
    cols["ok"] = np.asarray(out["ok"], dtype=bool)
    cols["pixels"] = np.stack([blank if px is None else px for px in pixels]) if pixels else blank[None][:0]
    return cols


def _input(batch: dict, i: int, opened: dict, limits: ImageLimits) -> ImageInput:
    name, error = str(batch["name"][i]), str(batch["error"][i])
    if error:
        return ImageInput(name, error=error)
    if batch["uri"][i]:
        return _uri_input(name, str(batch["uri"][i]), limits)
    key = (str(batch["path"][i]), bool(batch["from_folder"][i]))
    try:
        if key not in opened:
            opened[key] = list(inputs_of_file(Path(key[0]), key[1], image_limits=limits))
        items = opened[key]
        k = int(batch["member"][i])
        if k >= len(items) or items[k].name != name:
            return ImageInput(name, error="changed since it was listed (not found when read)")
        return items[k]
    except Exception as exc:  # defensive: a file system error must not fail the block
        return ImageInput(name, error=f"cannot read ({type(exc).__name__}: {exc})")


def _uri_input(name: str, uri: str, limits: ImageLimits) -> ImageInput:
    from pyarrow import fs as pafs  # see _uri_listing

    def read() -> bytes:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as fh:  # capped, as a local file
            data = fh.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            raise ImageError(too_large_reason(filesystem.get_file_info(path).size, limits.max_bytes))
        if data.startswith(ZIP_MAGIC) or uri.lower().endswith(ARCHIVE_EXTENSIONS):
            raise ImageError("zip archive at a URI (not read: give zips as local or shared paths)")
        return data

    return ImageInput(name, read)


# ---------------------------------------------------------------------- actor pool: inference


class InferenceActor:
    """One per Ray actor: the model (LiteRT when usable, as the default engine) with one interpreter."""

    def __init__(self, model_ref: list, threads: int, threshold: float | None, batch_size: int):
        import ray  # inside a Ray actor: Ray is there

        # One interpreter per actor, on its own CPU(s): the actor pool is the parallelism, so the runtime's
        # split of each batch over two interpreters (serving.litert) is turned off here.
        os.environ[litert.THREADS_ENV] = str(threads)
        os.environ[litert.PARALLEL_ENV] = "1"
        self._dir = tempfile.TemporaryDirectory(prefix="hematovision-model-")
        files: ModelFiles = ray.get(model_ref[0])
        self.clf = Classifier.load(files.write(Path(self._dir.name)), batch_size=batch_size)
        self.threshold = self.clf.default_threshold if threshold is None else float(threshold)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["order"])
        prepared = [
            Prepared(
                ImageInput(str(batch["name"][i])),
                str(batch["sha256"][i]),
                batch["pixels"][i] if batch["ok"][i] else None,
                None,
                str(batch["error"][i]),
                str(batch["note"][i]),
            )
            for i in range(n)
        ]
        try:
            preds = self.clf.finish(prepared, self.threshold)
        except Exception as exc:  # a batch the runtime refuses: error rows, never a failed job
            why = f"inference failed ({type(exc).__name__}: {exc})"
            preds = [Prediction(p.item.name, error=p.error or why, sha256=p.sha256, note=p.note) for p in prepared]
        k = len(self.clf.classes_)
        return {
            "order": np.asarray(batch["order"], dtype=np.int64),
            "file": np.asarray([p.file for p in preds], dtype=object),
            "predicted_class": np.asarray([p.predicted_class for p in preds], dtype=object),
            "confidence": np.asarray([p.confidence for p in preds], dtype=np.float64),
            "probabilities": np.asarray(
                [p.probabilities if p.ok else (np.nan,) * k for p in preds], dtype=np.float64
            ).reshape(n, k),
            "flagged": np.asarray([p.flagged for p in preds], dtype=bool),
            "error": np.asarray([p.error for p in preds], dtype=object),
            "sha256": np.asarray([p.sha256 for p in preds], dtype=object),
            "note": np.asarray([p.note for p in preds], dtype=object),
            "unfamiliar": np.asarray([p.unfamiliar for p in preds], dtype=bool),
            "unfamiliarity": np.asarray([p.unfamiliarity for p in preds], dtype=np.float64),
            "near_source": np.asarray([p.near_source for p in preds], dtype=object),
        }


# ---------------------------------------------------------------------- driver


def connect(options: RayOptions) -> None:
    """Join ``options.address``, or start a local cluster (reused when this process already has one);
    :class:`RayEngineError` with one line when neither works."""
    if not options.address:
        # A local cluster listens on the loopback address only. Ray on Linux otherwise binds the machine's
        # network address; a cluster started for one command has no business being reachable from outside.
        # (Read when Ray is imported, so set first.)
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
        # Nor does it send Ray's usage statistics anywhere (on by default; a lab's machine may not reach out).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray  # the optional engine: imported only when it runs

    if ray.is_initialized():
        return
    try:
        if options.address:
            # Nodes get this package from the driver (Ray uploads it), the model through the object store.
            ray.init(
                address=options.address,
                runtime_env={"py_modules": [str(Path(__file__).resolve().parents[1])]},
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        else:
            ray.init(
                num_cpus=options.num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
    except Exception as exc:  # no cluster at that address, no room for the object store, ...
        where = f"join the Ray cluster at {options.address}" if options.address else "start a local Ray cluster"
        first = (str(exc).splitlines() or [""])[0]
        raise RayEngineError(f"cannot {where}: {type(exc).__name__}: {first}") from exc


def classify(
    paths: Sequence[str],
    model_dir: str | Path | None = None,
    threshold: float | None = None,
    options: RayOptions = RayOptions(),
    *,
    skip: Callable[[str], bool] = lambda name: False,
    limits: ImageLimits = DEFAULT_LIMITS,
    progress: Callable[[int], None] | None = None,
    listed: Callable[[int], None] | None = None,
) -> Iterator[Prediction]:
    """Yield one :class:`Prediction` per input, in input order, as the default engine; ``skip(name)`` leaves
    out inputs already done (``--resume``); ``listed(n)`` is told how many are to come once they are listed.
    Connects with :func:`connect` if Ray is not running yet."""
    mdir = default_model_dir(model_dir)
    card = persistence.load_card(mdir)
    files = ModelFiles.read(mdir)
    connect(options)
    import ray  # the optional engine: imported only when it runs (after connect has set its environment)

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # results in input order, streamed (no sort stage)
    ctx.enable_progress_bars = False  # the caller shows one progress bar, counted in images
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-run INFO lines (set once ray.data is loaded)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": on purpose
    cpus = int(ray.cluster_resources().get("CPU", 0))
    workers = options.workers or max(1, cpus // (2 * options.threads))
    if workers * options.threads >= cpus:
        raise RayEngineError(
            f"{workers} inference actor(s) x {options.threads} thread(s) leave none of the cluster's {cpus} CPUs "
            "for decoding: use fewer --workers or more CPUs"
        )
    blocks = _blocks(listing(paths, skip), options.images_per_task)
    if listed:
        listed(sum(b.num_rows for b in blocks))
    if not blocks:
        return
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(
        decode_batch,
        batch_size=None,  # one listing block per task
        batch_format="numpy",
        fn_kwargs={"size": int(card.input_size), "framing": card.framing, "limits": limits},
        num_cpus=1,
        # Room for a block of framed cells and one decoded image at the size limit. A reservation unlike the
        # actors' also keeps Ray Data from fusing decoding into them: decoding stays a task stage, as wide as
        # the CPUs the actors leave free, beside inference (measured: fused, the actors decoded and inferred
        # in turn).
        memory=DECODE_TASK_MEMORY,
    )
    ds = ds.map_batches(
        InferenceActor,
        batch_size=options.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={
            "model_ref": [ray.put(files)],  # in a list: the actor fetches it (Ray resolves only top-level refs)
            "threads": options.threads,
            "threshold": threshold,
            "batch_size": options.batch_size,
        },
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=options.threads,
    )
    done = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["order"])):
            ok = not batch["error"][i]
            yield Prediction(
                str(batch["file"][i]),
                str(batch["predicted_class"][i]),
                float(batch["confidence"][i]),
                tuple(float(v) for v in batch["probabilities"][i]) if ok else (),
                bool(batch["flagged"][i]),
                str(batch["error"][i]),
                str(batch["sha256"][i]),
                str(batch["note"][i]),
                unfamiliar=bool(batch["unfamiliar"][i]),
                unfamiliarity=float(batch["unfamiliarity"][i]),
                near_source=str(batch["near_source"][i]) if "near_source" in batch else "",
            )
            done += 1
            if progress:
                progress(done)


def _blocks(rows: Iterable[dict], per_block: int) -> list:
    """The listing as Arrow tables of ``per_block`` rows: each becomes one Ray Data block, one decode task."""
    import pyarrow as pa  # Ray Data's own dependency: only this engine needs it

    out, chunk = [], []
    for r in rows:
        chunk.append(r)
        if len(chunk) == per_block:
            out.append(pa.Table.from_pylist(chunk))
            chunk = []
    if chunk:
        out.append(pa.Table.from_pylist(chunk))
    return out
