"""Field matching: augmented copies of one smear field are found as one group, other fields are not."""

import csv

import cv2
import numpy as np
import pytest

from hematovision.data import datasets as ds
from hematovision.data import fields
from hematovision.data.layout import KAGGLE_DIR


def _field(seed: int, size=(240, 320)) -> np.ndarray:
    """A synthetic smear field: pink 'red cells' of random size on a light background, one purple nucleus."""
    rng = np.random.default_rng(seed)
    img = np.full((*size, 3), (235, 225, 220), np.uint8)
    for _ in range(60):
        c = (int(rng.integers(0, size[1])), int(rng.integers(0, size[0])))
        r = int(rng.integers(8, 22))
        cv2.circle(
            img, c, r, (int(rng.integers(180, 220)), int(rng.integers(120, 160)), int(rng.integers(140, 180))), -1
        )
        cv2.circle(img, c, max(2, r // 3), (225, 205, 205), -1)
    cv2.ellipse(
        img,
        (int(rng.integers(80, 240)), int(rng.integers(60, 180))),
        (22, 16),
        float(rng.uniform(0, 180)),
        0,
        360,
        (110, 60, 170),
        -1,
    )
    return cv2.GaussianBlur(img, (3, 3), 0)


def _copy(img: np.ndarray, angle: float, flip: bool, shift=(0, 0)) -> np.ndarray:
    """An augmented copy as in the Kaggle set: rotated (black corners), shifted, maybe mirrored."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    m[:, 2] += shift
    out = cv2.warpAffine(img, m, (w, h), borderValue=(0, 0, 0))
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


def test_copies_match_and_other_fields_do_not():
    a, b = _field(1), _field(2)
    da = fields.describe(a)
    assert fields.same_field(fields.describe(_copy(a, 25, False, (10, -8))), da)
    assert fields.same_field(fields.describe(_copy(a, -70, True)), da)  # mirrored copies too
    assert not fields.same_field(fields.describe(b), da)
    assert not fields.same_field(fields.describe(_copy(b, 25, False)), da)


def test_group_fields_finds_each_field_whatever_the_order():
    rng = np.random.default_rng(0)
    copies = [
        (
            k,
            _copy(
                _field(k), float(rng.uniform(0, 360)), bool(rng.integers(2)), tuple(rng.integers(-15, 15, 2).tolist())
            ),
        )
        for k in (10, 11, 12)
        for _ in range(6)
    ]
    order = rng.permutation(len(copies))
    truth = [copies[i][0] for i in order]
    found = fields.group_fields([fields.describe(copies[i][1]) for i in order])
    pairs = {(t, f) for t, f in zip(truth, found)}
    assert len(pairs) == 3 == len(set(found))  # a one-to-one match between true and found fields
    assert found[0] == 0  # numbered in order of first appearance


def test_field_names_are_stable_first_members():
    rel = ["T/E/_3_9.jpeg", "T/E/_0_5.jpeg", "T/E/_1_1.jpeg"]
    assert fields.field_names(rel, [7, 7, 2]) == ["_0_5", "_0_5", "_1_1"]


def _write(root, split, cls, name, img):
    d = root / KAGGLE_DIR / split / cls
    d.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(d / name), img[..., ::-1])
    return (d / name).relative_to(root).as_posix()


def test_split_follows_fields_not_file_numbers(tmp_path):
    """Copies of one field carry different N's (as in the real set): the split must keep the field whole."""
    rows = []
    for field in range(10):
        for copy in range(3):
            rel = _write(
                tmp_path,
                "TRAIN",
                "MONOCYTE",
                f"_{copy}_{field * 10 + copy}.jpeg",
                _copy(_field(100 + field), 40 * copy, False),
            )
            rows.append((rel, f"f{field}"))
    table = dict(rows)
    images = ds.kaggle_images(tmp_path, field_table=table)
    splits = {}
    for i in images:
        splits.setdefault(i.group, set()).add(i.split)
    assert len(splits) == 10 and all(len(s) == 1 for s in splits.values())
    assert sum(s == {"val"} for s in splits.values()) == 2  # round(0.2 * 10) fields, stratified per class
    by_n = {}
    for i in images:
        by_n.setdefault(i.path.name.split("_")[1], set()).add(i.split)
    assert any(len(s) == 2 for s in by_n.values())  # grouping by N would have kept these together instead


def test_build_table_round_trip(tmp_path):
    for k in range(2):
        for c in range(3):
            _write(
                tmp_path, "TEST", "EOSINOPHIL", f"_{c}_{k * 10 + c}.jpeg", _copy(_field(200 + k), 30 * c + 5, c == 1)
            )
    rows = fields.build_table(tmp_path, workers=1, progress=False)
    assert len(rows) == 6 and len({f for _, f in rows}) == 2
    fields.write_table(rows, tmp_path / "t.csv")
    assert fields.read_table(tmp_path / "t.csv") == dict(rows)
    with open(tmp_path / "t.csv") as f:
        assert next(csv.reader(f)) == ["relpath", "field"]


def test_missing_table_falls_back_to_file_numbers(tmp_path, caplog):
    _write(tmp_path, "TRAIN", "EOSINOPHIL", "_4_1.jpeg", _field(3))
    images = ds.kaggle_images(tmp_path, field_table={})
    assert images[0].group == "kaggle/TRAIN/eosinophil/_4_"
    assert "not in the field table" in caplog.text


@pytest.mark.skipif(not fields.TABLE.is_file(), reason="no committed field table")
def test_committed_table_covers_whole_folders():
    table = fields.read_table()
    assert table and all(rel.startswith(KAGGLE_DIR.as_posix()) for rel in table)
    folders = {rel.rsplit("/", 1)[0] for rel in table}
    assert {f.split("/")[-2] for f in folders} == {"TRAIN", "TEST", "TEST_SIMPLE"}


def test_fields_command_writes_and_checks(tmp_path, capsys, monkeypatch):
    from hematovision import cli

    for k in range(2):
        for c in range(3):
            _write(tmp_path, "TRAIN", "LYMPHOCYTE", f"_{c}_{k * 10 + c}.jpeg", _copy(_field(300 + k), 50 * c, False))
    out = tmp_path / "fields.csv"
    assert cli.main(["fields", "--data", str(tmp_path), "--out", str(out), "--workers", "1"]) == 0
    assert "TRAIN/LYMPHOCYTE: 6 images, 2 fields" in capsys.readouterr().out
    monkeypatch.setattr(fields, "TABLE", out)
    assert cli.main(["fields", "--data", str(tmp_path), "--check", "--workers", "1"]) == 0
    fields.write_table([(r, "other") for r in fields.read_table(out)], out)
    assert cli.main(["fields", "--data", str(tmp_path), "--check", "--workers", "1"]) == 1
    assert cli.main(["fields", "--data", str(tmp_path / "missing")]) == 2
