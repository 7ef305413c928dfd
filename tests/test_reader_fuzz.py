"""Property tests: whatever the bytes, the reader answers with an image or an ImageError.

Random bytes, and valid PNG/JPEG/BMP/TIFF files with bytes flipped, cut,
inserted or deleted, go through ``decode_image``; random bytes named ``x.zip``
go through ``iter_uploads`` (and every member it yields is read).
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import image_bytes
from hematovision.imaging.decode import ImageError, decode_image
from hematovision.imaging.limits import ImageLimits
from hematovision.imaging.sources import ArchiveLimits, iter_uploads

SMALL = ImageLimits(max_bytes=2_000_000, max_pixels=4_000_000)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEEDS = {fmt: image_bytes(fmt, size=(40, 36)) for fmt in ("PNG", "JPEG", "BMP", "TIFF")}


def _decode_or_reason(data: bytes) -> None:
    try:
        d = decode_image(data, SMALL)
    except ImageError as exc:
        assert str(exc).strip()
        return
    assert d.rgb.dtype == np.uint8 and d.rgb.ndim == 3 and d.rgb.shape[2] == 3
    assert min(d.rgb.shape[:2]) >= SMALL.min_side and d.rgb.shape[0] * d.rgb.shape[1] <= SMALL.max_pixels


@st.composite
def mutated(draw):
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if not data:
            break
        k = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[k] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[k] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "truncate":
            del data[k:]
        elif op == "insert":
            data[k:k] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[k:k + draw(st.integers(1, 32))]
    return bytes(data)


@st.composite
def header_mutated(draw):
    """Mutations aimed at the first 64 bytes, where sizes, depths and offsets live."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        k = draw(st.integers(0, min(63, len(data) - 1)))
        data[k] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise_anything_but_image_error(data):
    _decode_or_reason(data)


@FUZZ
@given(
    st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"II+\x00"]),
    st.binary(max_size=2048),
)
def test_magic_then_random_bytes(magic, rest):
    _decode_or_reason(magic + rest)


@FUZZ
@given(mutated())
def test_mutated_images_never_raise_anything_but_image_error(data):
    _decode_or_reason(data)


@FUZZ
@given(header_mutated())
def test_header_mutations_never_raise_anything_but_image_error(data):
    _decode_or_reason(data)


def _consume(items) -> None:
    for item in items:
        assert isinstance(item.name, str) and item.name
        if item.error:
            continue
        try:
            item.read()
        except ImageError as exc:
            assert str(exc).strip()


def _a_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.png", SEEDS["PNG"])
        zf.writestr("dir/b.jpg", SEEDS["JPEG"])
    return buf.getvalue()


ZIP_SEED = _a_zip()
ZIP_LIMITS = ArchiveLimits(max_members=50, max_total_bytes=5_000_000, max_member_bytes=1_000_000)


@FUZZ
@given(st.binary(max_size=4096))
def test_iter_uploads_on_random_bytes_named_zip_never_raises(data):
    _consume(iter_uploads([("x.zip", data)], ZIP_LIMITS))


@FUZZ
@given(st.data())
def test_iter_uploads_on_mutated_zips_never_raises(data):
    z = bytearray(ZIP_SEED)
    for _ in range(data.draw(st.integers(1, 6))):
        k = data.draw(st.integers(0, len(z) - 1))
        op = data.draw(st.sampled_from(["set", "truncate", "insert"]))
        if op == "set":
            z[k] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del z[max(k, 4):]
        else:
            z[k:k] = data.draw(st.binary(min_size=1, max_size=16))
    _consume(iter_uploads([("x.zip", bytes(z))], ZIP_LIMITS))


def test_a_zip_member_with_an_empty_name_is_one_row_not_a_crash():
    """Found by the fuzz test above (2026-11-30): ``ZipInfo.is_dir()`` raises IndexError on an empty member name."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", image_bytes())
        zf.writestr("q.png", image_bytes(seed=1))
        zf.infolist()[-1].filename = ""  # the central directory names it ""
    items = list(iter_uploads([("x.zip", buf.getvalue())], ZIP_LIMITS))
    assert [i.name for i in items] == ["x.zip/a.png", "x.zip/"]
    _consume(items)
