"""Turn what a user hands over (files, folders, zip archives, uploads) into image inputs.

Every input becomes exactly one :class:`ImageInput`, in a stable order; one that
cannot be opened carries its reason in ``error`` instead of raising, so the
batch goes on. Bytes are read lazily (one image at a time), and zip members
are read in memory: nothing is ever extracted to a path built from a member name.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 10_000
    max_total_bytes: int = 2 * 1024 ** 3
    max_member_bytes: int = 50 * 1024 * 1024


DEFAULT_ARCHIVE_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class ImageInput:
    """One image to classify: a display name and a way to get its bytes (or why not)."""

    name: str
    read: Callable[[], bytes] = field(repr=False, compare=False, default=lambda: b"")
    error: str = ""


def from_bytes(name: str, data: bytes) -> ImageInput:
    return ImageInput(name, lambda: data)


def _is_zip(data_head: bytes, name: str) -> bool:
    return data_head.startswith(ZIP_MAGIC) or name.lower().endswith(".zip")


def iter_zip(name: str, data: bytes | Path, limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS) -> Iterator[ImageInput]:
    """Members of a zip archive as inputs named ``archive.zip/member``, in archive order.

    Directories are skipped silently; nested archives, encrypted members and
    members over the limits become error rows; a damaged archive is one error row.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        yield ImageInput(name, error=f"unreadable zip archive ({exc})")
        return
    files = [i for i in infos if not i.is_dir()]
    if len(files) > limits.max_members:
        yield ImageInput(name, error=f"zip archive has {len(files)} files; limit {limits.max_members}")
        return
    total = sum(i.file_size for i in files)
    if total > limits.max_total_bytes:
        yield ImageInput(name, error=f"zip archive expands to {total / 1e9:.1f} GB; limit {limits.max_total_bytes / 1e9:.1f} GB")
        return
    for info in files:
        member = f"{name}/{info.filename}"
        base = info.filename.rsplit("/", 1)[-1]
        if base.startswith(".") or info.filename.startswith("__MACOSX/"):
            continue  # resource forks and hidden files, not user images
        if info.flag_bits & 0x1:
            yield ImageInput(member, error="encrypted zip member (not supported)")
        elif info.filename.lower().endswith(".zip"):
            yield ImageInput(member, error="nested archive (not opened; upload it on its own)")
        elif info.file_size > limits.max_member_bytes:
            yield ImageInput(member, error=f"file too large ({info.file_size / 1e6:.1f} MB; limit {limits.max_member_bytes / 1e6:.0f} MB)")
        else:
            yield ImageInput(member, _zip_reader(zf, info, limits))


def _zip_reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ArchiveLimits) -> Callable[[], bytes]:
    def read() -> bytes:
        with zf.open(info) as fh:  # reads at most the declared size + 1 to catch lying headers
            data = fh.read(limits.max_member_bytes + 1)
        if len(data) > limits.max_member_bytes:
            raise ValueError("file too large after decompression")
        return data

    return read


def iter_uploads(uploads: Iterable[tuple[str, bytes]], limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS) -> Iterator[ImageInput]:
    """Uploaded ``(name, bytes)`` pairs: zips are opened, everything else is one input."""
    for name, data in uploads:
        if _is_zip(data[:4], name):
            yield from iter_zip(name, data, limits)
        else:
            yield from_bytes(name, data)


def iter_paths(paths: Iterable[str | Path], limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS) -> Iterator[ImageInput]:
    """Files, folders (recursive, sorted) and zip archives named on a command line."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(".")):
                yield from _one_file(f, limits, from_folder=True)
        elif p.is_file():
            yield from _one_file(p, limits, from_folder=False)
        else:
            yield ImageInput(str(raw), error="no such file or folder")


def _one_file(f: Path, limits: ArchiveLimits, from_folder: bool) -> Iterator[ImageInput]:
    try:
        with open(f, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        yield ImageInput(str(f), error=f"cannot open ({exc.strerror})")
        return
    if head.startswith(ZIP_MAGIC) or f.suffix.lower() == ".zip":
        yield from iter_zip(str(f), f, limits)
    elif from_folder and f.suffix.lower() not in IMAGE_EXTENSIONS and not _looks_like_image(head):
        return  # folders hold other files (notes, CSVs): only image-like files count
    else:
        yield ImageInput(str(f), lambda: f.read_bytes())


def _looks_like_image(head: bytes) -> bool:
    from .imaging import sniff_format

    return sniff_format(head) is not None
