"""Turn what a user hands over (files, folders, zip archives, uploads) into image inputs.

Every input becomes exactly one :class:`ImageInput`, in a stable order; one that
cannot be opened carries its reason in ``error`` instead of raising, so the
batch goes on. Bytes are read lazily (one image at a time), and zip members
are read in memory: nothing is ever extracted to a path built from a member name.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .decode import DecodedImage, ImageError, decode_image, sniff_format
from .limits import DEFAULT_LIMITS, ImageLimits, env_int, human_bytes, too_large_reason

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff")
# Pictures we cannot read: in a folder they still get a row saying so, rather than vanish.
UNSUPPORTED_IMAGE_EXTENSIONS = (".gif", ".webp", ".heic", ".heif", ".avif", ".jp2", ".jxl", ".svg", ".ico")
ARCHIVE_EXTENSIONS = (".zip", ".7z", ".rar", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".jar", ".apk")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_READABLE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits on a zip archive, checked from its central directory before any member is read.

    Defaults can be changed with ``HEMATOVISION_ZIP_MAX_MEMBERS``,
    ``HEMATOVISION_ZIP_MAX_TOTAL_BYTES`` and ``HEMATOVISION_ZIP_MAX_MEMBER_BYTES``
    (read once, at import); see ``docs/input-limits.md``.
    """

    max_members: int = 10_000
    max_total_bytes: int = 2 * 1024 ** 3
    max_member_bytes: int = 50 * 1024 * 1024

    @classmethod
    def from_env(cls) -> ArchiveLimits:
        d = cls()
        return cls(
            max_members=env_int("HEMATOVISION_ZIP_MAX_MEMBERS", d.max_members, 1),
            max_total_bytes=env_int("HEMATOVISION_ZIP_MAX_TOTAL_BYTES", d.max_total_bytes, 1),
            max_member_bytes=env_int("HEMATOVISION_ZIP_MAX_MEMBER_BYTES", d.max_member_bytes, 1),
        )


DEFAULT_ARCHIVE_LIMITS = ArchiveLimits.from_env()


@dataclass(frozen=True)
class ImageInput:
    """One image to classify: a display name and a way to get its bytes (or why not).

    ``read`` raises :class:`~hematovision.imaging.ImageError` with a plain
    reason when the bytes cannot be had (a file over the size limit, a damaged
    zip member); ``name`` is the user's name, shown as text, never a path to write to.
    """

    name: str
    read: Callable[[], bytes] = field(repr=False, compare=False, default=lambda: b"")
    error: str = ""


def display_name(name: str) -> str:
    """A user's file name as plain one-line text: control characters and undecodable bytes become U+FFFD.

    File names on Linux may hold any byte but ``/`` and NUL; Python keeps
    undecodable ones as lone surrogates, which cannot be written to a UTF-8 CSV.
    """
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join("\ufffd" if (ord(c) < 32 or 127 <= ord(c) < 160) else c for c in text)


def from_bytes(name: str, data: bytes) -> ImageInput:
    return ImageInput(display_name(name), lambda: data)


def _is_zip(data_head: bytes, name: str) -> bool:
    return data_head.startswith(ZIP_MAGIC) or name.lower().endswith(".zip")


def iter_zip(name: str, data: bytes | Path, limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS) -> Iterator[ImageInput]:
    """Members of a zip archive as inputs named ``archive.zip/member``, in archive order.

    The archive is read in memory (or straight from its file): nothing is ever
    extracted, so member names like ``../x`` or ``/etc/x`` are only names.
    Directories, hidden files and ``__MACOSX/`` entries are skipped; encrypted
    members, nested archives, symbolic links, unsupported compression and
    members over the limits become error rows; an archive over the count or
    total-size limit, a damaged archive, or one holding no files is one error row.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data)
        infos = zf.infolist()
    except Exception as exc:  # BadZipFile, OSError, EOFError, NotImplementedError (multi-disk), ValueError, ...
        yield ImageInput(display_name(name), error=f"unreadable zip archive ({exc or type(exc).__name__})")
        return
    if len(infos) > limits.max_members:
        yield ImageInput(display_name(name), error=f"zip archive has {len(infos)} entries; limit {limits.max_members}")
        return
    files = [i for i in infos if not i.filename.endswith("/")]  # not ZipInfo.is_dir(): an empty name raises
    total = sum(i.file_size for i in files)
    if total > limits.max_total_bytes:
        yield ImageInput(
            display_name(name),
            error=f"zip archive expands to {human_bytes(total)}; limit {human_bytes(limits.max_total_bytes)}",
        )
        return
    name = display_name(name)
    produced = 0
    for info in files:
        member = display_name(f"{name}/{info.filename}")
        base = info.filename.rstrip("/").rsplit("/", 1)[-1]
        if base.startswith(".") or info.filename.startswith("__MACOSX/"):
            continue  # resource forks and hidden files, not user images
        produced += 1
        mode = info.external_attr >> 16
        if info.flag_bits & 0x1:
            yield ImageInput(member, error="encrypted zip member (not supported)")
        elif stat.S_ISLNK(mode):
            yield ImageInput(member, error="symbolic link in zip archive (skipped)")
        elif base.lower().endswith(ARCHIVE_EXTENSIONS):
            yield ImageInput(member, error="nested archive (not opened; upload it on its own)")
        elif info.compress_type not in _READABLE_METHODS:
            yield ImageInput(member, error=f"unsupported zip compression method ({info.compress_type})")
        elif info.file_size > limits.max_member_bytes:
            yield ImageInput(member, error=too_large_reason(info.file_size, limits.max_member_bytes))
        else:
            yield ImageInput(member, _zip_reader(zf, info, limits))
    if produced == 0:
        skipped = len(infos)
        yield ImageInput(
            name,
            error=f"zip archive holds no files ({skipped} entries skipped: folders, hidden files)"
            if skipped
            else "zip archive is empty",
        )


def _zip_reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ArchiveLimits) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with zf.open(info) as fh:  # reads at most the declared size (checked above) + 1, whatever the data claims
                data = fh.read(limits.max_member_bytes + 1)
        except Exception as exc:  # BadZipFile (bad CRC), zlib.error, EOFError, lzma/bz2 errors, ...
            raise ImageError(f"damaged zip member ({exc or type(exc).__name__})") from None
        if len(data) > limits.max_member_bytes:
            raise ImageError(f"file too large after decompression (limit {human_bytes(limits.max_member_bytes)})")
        return data

    return read


def iter_uploads(
    uploads: Iterable[tuple[str, bytes]],
    limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
) -> Iterator[ImageInput]:
    """Uploaded ``(name, bytes)`` pairs: zips are opened, everything else is one input."""
    for name, data in uploads:
        if _is_zip(bytes(data[:4]), name):
            yield from iter_zip(name, data, limits)
        else:
            yield from_bytes(name, data)


@dataclass(frozen=True)
class ListedFile:
    """One file (or unusable path) named by a command line, before it is opened: what :func:`iter_paths`
    expands with :func:`inputs_of_file`. Engines that read on other machines list these first and
    expand each where it is read (a zip's members are only known once it is opened)."""

    name: str
    path: Path | None = None
    from_folder: bool = False
    error: str = ""


def iter_paths(
    paths: Iterable[str | Path],
    limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
    image_limits: ImageLimits = DEFAULT_LIMITS,
) -> Iterator[ImageInput]:
    """Files, folders (recursive, sorted) and zip archives named on a command line.

    Folders are walked without following symbolic links to folders (no loops);
    hidden files and folders are skipped. A plain file over the size limit is an
    error row from its size on disk, before any byte is read.
    """
    for f in list_files(paths):
        if f.error or f.path is None:
            yield ImageInput(f.name, error=f.error)
        else:
            yield from inputs_of_file(f.path, f.from_folder, limits, image_limits)


def list_files(paths: Iterable[str | Path]) -> Iterator[ListedFile]:
    """The files :func:`iter_paths` reads, in its order, none of them opened yet."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in _walk(p):
                yield ListedFile(display_name(str(f)), f, from_folder=True)
        elif p.is_file():
            yield ListedFile(display_name(str(p)), p)
        elif p.exists() or p.is_symlink():
            yield ListedFile(
                display_name(str(raw)), error="not a regular file or folder" if p.exists() else "broken symbolic link"
            )
        else:
            yield ListedFile(display_name(str(raw)), error="no such file or folder")


def _walk(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=None):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for n in filenames:
            f = Path(dirpath) / n
            if not n.startswith(".") and f.is_file():
                found.append(f)
    return sorted(found)


def inputs_of_file(
    f: Path,
    from_folder: bool = False,
    limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
    image_limits: ImageLimits = DEFAULT_LIMITS,
) -> Iterator[ImageInput]:
    """The inputs one listed file holds: itself, a zip's members, or nothing (a non-image file in a folder)."""
    try:
        with open(f, "rb") as fh:
            head = fh.read(8)
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        yield ImageInput(display_name(str(f)), error=f"cannot open ({exc.strerror or exc})")
        return
    if head.startswith(ZIP_MAGIC) or f.suffix.lower() == ".zip":
        yield from iter_zip(str(f), f, limits)
    elif (
        from_folder
        and f.suffix.lower() not in IMAGE_EXTENSIONS + UNSUPPORTED_IMAGE_EXTENSIONS
        and sniff_format(head) is None
    ):
        return  # folders hold other files (notes, CSVs): only image-like files count
    elif size > image_limits.max_bytes:
        yield ImageInput(display_name(str(f)), error=too_large_reason(size, image_limits.max_bytes))
    else:
        yield ImageInput(display_name(str(f)), _file_reader(f, image_limits.max_bytes))


def _file_reader(f: Path, max_bytes: int) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(f, "rb") as fh:  # capped: a file that grew since it was listed cannot flood memory
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ImageError(f"file too large (limit {human_bytes(max_bytes)})")  # it grew after it was listed
        return data

    return read


@dataclass(frozen=True)
class LoadedInput:
    """One input read, hashed and decoded; ``decoded`` is ``None`` and ``error`` says why when that failed."""

    sha256: str = ""
    decoded: DecodedImage | None = None
    error: str = ""


def load_input(item: ImageInput, limits: ImageLimits = DEFAULT_LIMITS) -> LoadedInput:
    """Read, hash and decode one input for a worker thread; never raises (every engine words errors alike)."""
    if item.error:
        return LoadedInput(error=item.error)
    try:
        data = item.read()
    except ImageError as exc:  # a reason already worded for the user (e.g. a damaged zip member)
        return LoadedInput(error=str(exc))
    except Exception as exc:  # a vanished file, a damaged zip member
        return LoadedInput(error=f"cannot read ({type(exc).__name__}: {exc})")
    sha = hashlib.sha256(data).hexdigest()
    try:
        return LoadedInput(sha, decode_image(data, limits))
    except ImageError as exc:
        return LoadedInput(sha, error=str(exc))
    except Exception as exc:  # defensive: the reader must never take the batch down
        return LoadedInput(sha, error=f"could not decode ({type(exc).__name__})")
