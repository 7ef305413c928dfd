"""A hostile corpus through the one input path, via the package API and via the CLI.

Every input gives exactly one row (a zip gives one per member, or one for the
whole archive when it is refused); bad inputs carry a plain reason, good ones
are classified, nothing raises, the CLI exits 0 and formula-like names are
neutralised in the CSV. Small limits are configured so bombs stay cheap.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import image_bytes
from hematovision.imaging.decode import ImageError, decode_image
from hematovision.imaging.limits import ImageLimits
from hematovision.imaging.sources import ArchiveLimits, display_name, iter_paths, iter_uploads

REPO = Path(__file__).resolve().parents[1]
IMG_LIMITS = ImageLimits(max_bytes=1_000_000)
ZIP_LIMITS = ArchiveLimits(max_members=8, max_total_bytes=3_000_000, max_member_bytes=1_000_000)
LIMIT_ENV = {
    "HEMATOVISION_MAX_BYTES": "1000000",
    "HEMATOVISION_ZIP_MAX_MEMBERS": "8",
    "HEMATOVISION_ZIP_MAX_TOTAL_BYTES": "3000000",
    "HEMATOVISION_ZIP_MAX_MEMBER_BYTES": "1000000",
}
OK, ERR, ANY = "ok", "error", "any"


# ---------------------------------------------------------------- builders

def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(w=64, h=48, seed=0) -> Image.Image:
    return Image.open(io.BytesIO(image_bytes("PNG", size=(w, h), seed=seed))).convert("RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(w=50_000, h=50_000) -> bytes:
    """A few dozen bytes whose header claims w x h RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def bomb_bmp(w=50_000, h=50_000) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 64, 0, 0, 14 + len(info)) + info + b"\0" * 64


def bomb_tiff(w=50_000, h=50_000) -> bytes:
    tags = [
        (256, 4, w),
        (257, 4, h),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 8 + 2 + 9 * 12 + 4),
        (277, 3, 1),
        (278, 4, h),
        (279, 4, 16),
    ]
    ifd = (
        struct.pack("<H", len(tags))
        + b"".join(
            struct.pack("<HHII", t, typ, 1, v) if typ == 4 else struct.pack("<HHIHH", t, typ, 1, v, 0)
            for t, typ, v in tags
        )
        + b"\0\0\0\0"
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 16


def bomb_jpeg(w=65_000, h=65_000) -> bytes:
    data = bytearray(image_bytes("JPEG", size=(64, 64)))
    k = data.index(b"\xff\xc0")
    data[k + 5:k + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def multipage_tiff() -> bytes:
    pages = [_rgb(seed=s) for s in range(3)]
    return _save(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def grey16_png() -> bytes:
    return _save(Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)), "PNG")


def rgb48(ext: str) -> bytes:
    import cv2

    arr = np.random.default_rng(3).integers(0, 65535, (48, 64, 3)).astype(np.uint16)
    return cv2.imencode(ext, arr)[1].tobytes()


def palette_trns_png() -> bytes:
    img = _rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(img, "PNG", transparency=0)


def exif_rotated_jpeg() -> bytes:
    img = _rgb(80, 40)
    exif = img.getexif()
    exif[0x0112] = 6
    return _save(img, "JPEG", exif=exif)


def webp_bytes() -> bytes:
    try:
        return _save(_rgb(), "WEBP")
    except (KeyError, OSError):
        return b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\0" * 40


def corrupt_middle(data: bytes) -> bytes:
    b = bytearray(data)
    mid = len(b) // 2
    b[mid:mid + 64] = bytes((x ^ 0x5A) for x in b[mid:mid + 64])
    return bytes(b)


def zip_of(members: dict, symlinks: tuple = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(name, data)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _patch_headers(data: bytes, local_off: int, central_off: int, value: bytes) -> bytes:
    """Write ``value`` at the same field of every local and central header."""
    b = bytearray(data)
    for sig, off in ((b"PK\x03\x04", local_off), (b"PK\x01\x02", central_off)):
        k = b.find(sig)
        while k != -1:
            b[k + off:k + off + len(value)] = value
            k = b.find(sig, k + 4)
    return bytes(b)


def encrypted_zip() -> bytes:
    """A member flagged as encrypted (general-purpose bit 0) in both headers."""
    data = zip_of({"secret.png": image_bytes()})
    flags = struct.unpack_from("<H", data, 6)[0] | 0x1
    return _patch_headers(data, 6, 8, struct.pack("<H", flags))


def lying_size_zip() -> bytes:
    """A member declaring 100 bytes uncompressed that inflates to 900 kB."""
    return _patch_headers(zip_of({"liar.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 900_000}), 22, 24, struct.pack("<I", 100))


def unknown_method_zip() -> bytes:
    return _patch_headers(zip_of({"odd.png": image_bytes()}), 8, 10, struct.pack("<H", 99))


def corpus() -> list[tuple[str, bytes, list[str]]]:
    """(file name, bytes, expected outcome of each row it gives)."""
    good_png, good_jpg = image_bytes("PNG"), image_bytes("JPEG")
    return [
        ("empty.png", b"", [ERR]),
        ("one_byte.jpg", b"\xff", [ERR]),
        ("text.jpg", b"just some notes, not a picture\n" * 4, [ERR]),
        ("page.png", b"<!doctype html><html><body><script>alert(1)</script></body></html>", [ERR]),
        ("truncated.jpg", good_jpg[: len(good_jpg) // 2], [ERR]),
        ("truncated.png", good_png[: len(good_png) // 2], [ERR]),
        ("corrupt_middle.jpg", corrupt_middle(good_jpg), [ANY]),
        ("corrupt_middle.png", corrupt_middle(good_png), [ANY]),
        ("tiny_1x1.png", _save(Image.new("RGB", (1, 1)), "PNG"), [ERR]),
        ("tiny_31x31.png", _save(Image.new("RGB", (31, 31), "white"), "PNG"), [ERR]),
        ("thin_1000x10.png", _save(Image.new("RGB", (1000, 10), "white"), "PNG"), [ERR]),
        ("edge_32x32.png", _save(_rgb(32, 32), "PNG"), [OK]),
        ("bomb.png", bomb_png(), [ERR]),
        ("bomb.bmp", bomb_bmp(), [ERR]),
        ("bomb.tif", bomb_tiff(), [ERR]),
        ("bomb.jpg", bomb_jpeg(), [ERR]),
        ("multipage.tif", multipage_tiff(), [OK]),
        ("grey16.png", grey16_png(), [OK]),
        ("rgb48.png", rgb48(".png"), [OK]),
        ("rgb48.tif", rgb48(".tif"), [OK]),
        ("cmyk.jpg", _save(_rgb().convert("CMYK"), "JPEG"), [OK]),
        ("cmyk.tif", _save(_rgb().convert("CMYK"), "TIFF"), [OK]),
        ("palette_trns.png", palette_trns_png(), [OK]),
        ("rgba.png", _save(_rgb().convert("RGBA"), "PNG"), [OK]),
        ("la.png", _save(_rgb().convert("LA"), "PNG"), [OK]),
        ("grey.jpg", _save(_rgb().convert("L"), "JPEG"), [OK]),
        ("bilevel.bmp", _save(_rgb().convert("1"), "BMP"), [OK]),
        ("plain.bmp", image_bytes("BMP"), [OK]),
        ("exif_rotated.jpg", exif_rotated_jpeg(), [OK]),
        ("png_named.jpg", good_png, [OK]),
        ("trailing_garbage.png", good_png + os.urandom(300), [OK]),
        ("anim.gif", image_bytes("GIF"), [ERR]),
        ("img.webp", webp_bytes(), [ERR]),
        ("webp_named.png", webp_bytes(), [ERR]),
        ("doc.pdf.jpg", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n", [ERR]),
        ("zeros.png", b"\0" * 4096, [ERR]),
        ("random.jpg", np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(), [ERR]),
        ("huge_file.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 1_100_000, [ERR]),
        ("=cmd|' -c calc'!A0.png", good_png, [OK]),
        ("+plus.png", good_png, [OK]),
        ("-minus.jpg", good_jpg, [OK]),
        ("@at.png", b"=HYPERLINK(\"http://x\")", [ERR]),
        ("<script>alert(1)<-script>.png", good_png, [OK]),
        ("细胞 ünïcode ✓.png", good_png, [OK]),
        ("name with  spaces.jpg", good_jpg, [OK]),
        ("tab\tand\rcr.png", good_png, [OK]),
        ("traversal.zip", zip_of({"../../evil.png": good_png, "/abs/evil.png": good_png}), [OK, OK]),
        ("nested.zip", zip_of({"inner.zip": zip_of({"x.png": good_png}), "a.png": good_png}), [ERR, OK]),
        ("encrypted.zip", encrypted_zip(), [ERR]),
        ("symlink.zip", zip_of({"real.png": good_png}, symlinks=(("link.png", "/etc/passwd"),)), [OK, ERR]),
        ("count_bomb.zip", zip_of({f"m{k}.png": good_png for k in range(20)}), [ERR]),
        ("size_bomb.zip", zip_of({f"z{k}.png": b"\0" * 900_000 for k in range(4)}), [ERR]),
        ("member_too_big.zip", zip_of({"big.png": b"\0" * 1_200_000, "ok.png": good_png}), [ERR, OK]),
        ("lying_size.zip", lying_size_zip(), [ERR]),
        ("unknown_method.zip", unknown_method_zip(), [ERR]),
        ("dirs_only.zip", zip_of({"a/": b"", "a/b/": b""}), [ERR]),
        ("empty.zip", b"PK\x05\x06" + b"\0" * 18, [ERR]),
        ("hidden_and_macosx.zip", zip_of({"__MACOSX/._a.png": b"x", ".DS_Store": b"x", "a.png": good_png}), [OK]),
        ("damaged.zip", b"PK\x03\x04 this is not really a zip archive", [ERR]),
        ("truncated.zip", zip_of({"a.png": good_png, "b.png": good_png})[:300], [ERR]),
        ("not_a_zip.zip", good_png, [ERR]),
        ("zip_named.png", zip_of({"=formula member.png": good_png, "text.png": b"hello"}), [OK, ERR]),
    ]


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("hostile") / "corpus"
    root.mkdir()
    expected = {}
    for name, data, rows in corpus():
        (root / name).write_bytes(data)
        expected[display_name(name)] = rows
    # a file name that is not valid UTF-8, a symlink loop, a hidden file, a non-image note
    bad = os.fsencode(root) + b"/bad\xff\xfename.png"
    with open(bad, "wb") as fh:
        fh.write(image_bytes())
    expected["bad\ufffd\ufffdname.png"] = [OK]
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / ".hidden.png").write_bytes(b"")
    (root / "notes.txt").write_text("ignored: not image-like")
    return root, expected


def _top(name: str) -> str:
    return name.split("/", 1)[0]


def _check_rows(rows: list[tuple[str, str]], expected: dict[str, list[str]]) -> None:
    """``rows``: (name relative to the corpus, error) in output order."""
    got: dict[str, list[str]] = {}
    for name, error in rows:
        got.setdefault(_top(name), []).append(error)
    assert sorted(got) == sorted(expected), set(got) ^ set(expected)
    for top, want in expected.items():
        errors = got[top]
        assert len(errors) == len(want), (top, errors)
        for w, e in zip(want, errors):
            if w == OK:
                assert e == "", (top, e)
            elif w == ERR:
                assert e.strip(), top
    assert len(rows) == sum(len(v) for v in expected.values())


def test_corpus_has_at_least_30_kinds(hostile_dir):
    assert len(hostile_dir[1]) >= 30


def test_hostile_corpus_through_the_api(hostile_dir, tiny_model_dir):
    from hematovision.serving.classifier import Classifier

    root, expected = hostile_dir
    before = sorted(p.name for p in root.parent.parent.iterdir())
    clf = Classifier.load(tiny_model_dir)
    inputs = list(iter_paths([root], ZIP_LIMITS, IMG_LIMITS))
    preds = list(clf.classify(inputs, limits=IMG_LIMITS))
    assert len(preds) == len(inputs)
    prefix = str(root) + "/"
    rows = [(p.file[len(prefix):], p.error) for p in preds]
    _check_rows(rows, expected)
    by = {p.file[len(prefix):]: p for p in preds}
    assert by["multipage.tif"].note.startswith("multi-page TIFF: first of 3")
    assert "too large" in by["bomb.png"].error and "too large" in by["bomb.bmp"].error
    assert "too large" in by["bomb.tif"].error and "too large" in by["bomb.jpg"].error
    assert "too small" in by["tiny_31x31.png"].error and by["empty.png"].error == "empty file"
    assert by["huge_file.png"].error.startswith("file too large")
    assert "not a supported image" in by["anim.gif"].error
    assert "encrypted" in by["encrypted.zip/secret.png"].error
    assert "nested archive" in by["nested.zip/inner.zip"].error
    assert "symbolic link" in by["symlink.zip/link.png"].error
    assert "limit 8" in by["count_bomb.zip"].error and "expands to" in by["size_bomb.zip"].error
    assert "damaged zip member" in by["lying_size.zip/liar.png"].error
    assert "compression method" in by["unknown_method.zip/odd.png"].error
    assert "holds no files" in by["dirs_only.zip"].error
    assert "tab\ufffdand\ufffdcr.png" in by
    for p in preds:
        assert p.ok == (p.predicted_class != "")
        if p.ok:
            assert abs(sum(p.probabilities) - 1) < 1e-4
    # nothing was extracted next to the corpus (traversal names stay names)
    assert sorted(p.name for p in root.parent.parent.iterdir()) == before


def test_hostile_corpus_through_the_cli(hostile_dir, tiny_model_dir, tmp_path):
    root, expected = hostile_dir
    out = tmp_path / "x.csv"
    env = {**os.environ, **LIMIT_ENV, "HEMATOVISION_MODEL": str(tiny_model_dir), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "hematovision", "classify", ".", "--out", str(out), "--quiet"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    names = [r["file"] for r in table]
    assert "zip_named.png/=formula member.png" in names
    for raw in ("=cmd|' -c calc'!A0.png", "+plus.png", "-minus.jpg", "@at.png"):
        assert "'" + raw in names, raw  # neutralised: a spreadsheet shows it as text
    for r in table:
        for v in r.values():
            assert not v.startswith(("=", "+", "-", "@", "\t", "\r")), v
    rows = [(r["file"][1:] if r["file"][:2] in ("'=", "'+", "'-", "'@") else r["file"], r["error"]) for r in table]
    _check_rows(rows, expected)
    for r in table:
        assert (r["predicted_class"] != "") == (r["error"] == "")
    assert f"{len(table)} images" in proc.stderr


def test_upload_path_gives_the_same_rows(hostile_dir):
    """The dashboard's path (uploads in memory) yields the same inputs as the folder walk."""
    root, expected = hostile_dir
    uploads = [
        (p.name, p.read_bytes())
        for p in sorted(root.iterdir())
        if p.is_file() and not p.is_symlink() and p.suffix != ".txt" and not p.name.startswith(".")
    ]
    items = list(iter_uploads(uploads, ZIP_LIMITS))
    assert sorted({_top(i.name) for i in items}) == sorted(expected)
    assert len(items) == sum(len(v) for v in expected.values())


@pytest.mark.parametrize("data", [bomb_png(), bomb_bmp(), bomb_tiff(), bomb_jpeg(), bomb_png(200_000, 200_000)])
def test_bombs_are_refused_from_the_header_before_any_pixel_is_decoded(data, monkeypatch):
    from PIL import ImageFile

    def no_load(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    with pytest.raises(ImageError, match=r"^image too large \(\d+x\d+ = \d+ MP; limit 40 MP\)$"):
        decode_image(data)


def test_exif_rotation_and_multipage_note():
    assert decode_image(exif_rotated_jpeg()).rgb.shape[:2] == (80, 40)
    d = decode_image(multipage_tiff())
    assert d.rgb.shape == (48, 64, 3) and d.note == "multi-page TIFF: first of 3 pages used"
    # the first page, not another one
    assert np.array_equal(d.rgb, np.asarray(_rgb(seed=0)))


def test_limits_come_from_the_environment():
    code = (
        "from hematovision.imaging.limits import DEFAULT_LIMITS as I; from hematovision.imaging.sources import "
        "DEFAULT_ARCHIVE_LIMITS as A; "
        "print(I.max_pixels, I.max_bytes, I.min_side, A.max_members, A.max_total_bytes, A.max_member_bytes)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HEMATOVISION_MAX_PIXELS": "1_000",
        "HEMATOVISION_MIN_SIDE": "bogus",
        **LIMIT_ENV,
    }
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["1000", "1000000", "32", "8", "3000000", "1000000"], proc.stderr
    assert "HEMATOVISION_MIN_SIDE='bogus' is not a whole number" in proc.stderr
