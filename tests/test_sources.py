"""Input discovery: one row per input, stable order, archives read in memory."""

import io
import zipfile

from conftest import image_bytes
from hematovision.imaging.sources import iter_paths, iter_uploads


def _zip(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_folder_recursive_sorted_and_zip(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.png").write_bytes(image_bytes())
    (tmp_path / "a.jpg").write_bytes(image_bytes("JPEG"))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "c.zip").write_bytes(_zip({"in/1.png": image_bytes(), "in/2.png": image_bytes(seed=2)}))
    names = [i.name.replace(str(tmp_path) + "/", "") for i in iter_paths([tmp_path])]
    assert names == ["a.jpg", "b/x.png", "c.zip/in/1.png", "c.zip/in/2.png"]


def test_missing_path_is_an_error_row(tmp_path):
    rows = list(iter_paths([tmp_path / "nope.png"]))
    assert len(rows) == 1 and "no such file" in rows[0].error


def test_zip_traversal_names_are_only_names():
    data = _zip({"../../evil.png": image_bytes(), "/abs.png": image_bytes()})
    rows = list(iter_uploads([("up.zip", data)]))
    assert [r.read()[:4] for r in rows] == [image_bytes()[:4]] * 2  # read in memory, nothing written


def test_nested_zip_and_damaged_zip_are_reported():
    rows = list(
        iter_uploads([("a.zip", _zip({"inner.zip": _zip({"x.png": image_bytes()})})), ("b.zip", b"PK\x03\x04garbage")])
    )
    assert "nested archive" in rows[0].error
    assert "unreadable zip" in rows[1].error
