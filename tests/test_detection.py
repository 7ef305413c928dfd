"""White-cell detection in whole fields: generated fields with known cells, recoloured, large; BCCD helpers."""

import numpy as np
import pytest

from hematovision.detection import CellBox, analyse_field, bccd, box_iou, detect_white_cells
from hematovision.detection.cells import cell_key, crop_cell
from hematovision.detection.recolour import RECOLOURS, recolour
from hematovision.detection.synthetic import WhiteCell, make_field

W, H = 640, 480


def _matched(found, cells, w=W, h=H, iou=0.5):
    """How many of ``cells`` have a found box at IoU >= ``iou`` (one-to-one)."""
    m = bccd.match_boxes([(b.x0, b.y0, b.x1, b.y1) for b in found], [c.box(w, h) for c in cells], iou)
    return m.tp


SEVERAL = (WhiteCell(150, 140, 60, 3), WhiteCell(460, 300, 55, 1), WhiteCell(300, 380, 65, 4))


def test_finds_several_cells_with_whole_cell_boxes():
    found = detect_white_cells(make_field(cells=SEVERAL, seed=1))
    assert len(found) == 3
    assert _matched(found, SEVERAL) == 3
    assert all(isinstance(b, CellBox) and not b.partial and b.score >= 1 for b in found)
    # Boxes hold the cytoplasm, not just the nucleus: about the cell's size.
    for b in found:
        assert 90 <= b.width <= 180 and 90 <= b.height <= 180


def test_red_cells_and_platelets_alone_are_not_white_cells():
    field = make_field(cells=(), platelets=25, seed=2)
    assert detect_white_cells(field) == []
    a = analyse_field(field)
    assert 75 <= a.rbc_diameter <= 100  # red cells of radius 45 px


def test_blank_and_grey_fields_give_no_cells():
    assert detect_white_cells(np.full((H, W, 3), 230, np.uint8)) == []
    assert detect_white_cells(np.full((H, W, 3), 128, np.uint8)) == []
    rng = np.random.default_rng(0)
    assert detect_white_cells(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) is not None  # noise: no crash


def test_touching_cells_are_separated():
    cells = (WhiteCell(250, 240, 50, 1), WhiteCell(345, 250, 50, 1))
    found = detect_white_cells(make_field(cells=cells, seed=1))
    assert len(found) == 2
    assert _matched(found, cells) == 2


def test_a_lobed_nucleus_is_one_cell():
    cells = (WhiteCell(250, 240, 60, 4), WhiteCell(450, 150, 58, 3))
    found = detect_white_cells(make_field(cells=cells, seed=3))
    assert len(found) == 2 and _matched(found, cells) == 2


def test_a_cell_cut_by_the_edge_is_partial():
    cells = (WhiteCell(20, 240, 60, 1), WhiteCell(400, 200, 55, 1))
    found = detect_white_cells(make_field(cells=cells, seed=1))
    assert len(found) == 2
    edge = min(found, key=lambda b: b.x0)
    inner = max(found, key=lambda b: b.x0)
    assert edge.partial and edge.x0 == 0
    assert not inner.partial
    assert _matched(found, cells) == 2


@pytest.mark.parametrize("name", sorted(RECOLOURS))
def test_recoloured_fields_give_the_same_cells(name):
    field = make_field(cells=SEVERAL, seed=1)
    found = detect_white_cells(recolour(field, name))
    assert len(found) == 3 and _matched(found, SEVERAL) == 3, name


def test_reddish_brown_nuclei_on_yellow_where_b_minus_g_fails():
    field = recolour(make_field(cells=SEVERAL, seed=4), "yellow_brown")
    nucleus = field[140, 150].astype(int)  # centre of a lobed cell's nucleus region
    found = detect_white_cells(field)
    assert _matched(found, SEVERAL) == 3
    # The premise: on this field the nuclei are not blue over green.
    assert nucleus[2] - nucleus[1] < 40


def test_large_photograph_boxes_in_original_pixels():
    k = 6.25  # 640x480 -> 4000x3000
    cells = tuple(WhiteCell(c.x * k, c.y * k, c.radius * k, c.lobes) for c in SEVERAL)
    field = make_field(4000, 3000, cells, rbc_radius=45 * k, platelets=10, seed=1)
    a = analyse_field(field)
    assert len(a.boxes) == 3 and _matched(a.boxes, cells, 4000, 3000) == 3
    assert a.scale < 0.2  # searched on a small copy
    assert 450 <= a.rbc_diameter <= 650


def test_box_iou_and_matching():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    m = bccd.match_boxes([(0, 0, 10, 10), (100, 100, 120, 120)], [(1, 1, 11, 11), (0, 0, 9, 9)])
    assert m.tp == 1 and m.pairs[0][:2] == (0, 1)  # the better of two annotated boxes, and only one
    s = bccd.score([m])
    assert s.recall == 0.5 and s.precision == 0.5


def test_split_is_by_name_hash_and_stable():
    assert bccd.split_of("BloodImage_00000") in ("dev", "test")
    names = [f"BloodImage_{i:05d}" for i in range(400)]
    dev = sum(bccd.split_of(n) == "dev" for n in names)
    assert 0.62 < dev / len(names) < 0.78
    recorded = bccd.read_split()
    assert len(recorded) == 364
    assert all(bccd.split_of(n) == s for n, s in recorded.items())


def test_crop_and_cell_key():
    rgb = np.zeros((100, 200, 3), np.uint8)
    box = CellBox(5, 20, 45, 60, False, 2.0)
    crop = crop_cell(rgb, box, margin=0.25)
    assert crop.shape == (60, 55, 3)  # 10 px margin, clipped at the left edge
    assert cell_key("ab" * 32, box) == "ab" * 32 + "#5,20,45,60"
