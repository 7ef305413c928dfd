"""Cell framing: the nucleus is found, the square is cut around it, and serving applies what the card says."""

import json

import numpy as np
import pytest

from conftest import make_tiny_model_dir
from hematovision.imaging import framing
from hematovision.imaging.decode import resize_for_model
from hematovision.imaging.framing import FRAMING_REVISION
from hematovision.modeling import persistence

BACKGROUND = (232, 226, 236)
RED_CELL = (222, 160, 178)
NUCLEUS = (118, 62, 190)


def smear(h=240, w=320, nucleus=((250, 60, 20),), red_cells=((80, 150, 30), (160, 90, 28), (40, 40, 25))):
    """A generated smear field: pink red cells and purple nuclei (x, y, radius) on a light background."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[:h, :w]
    for (x, y, r) in red_cells:
        img[(yy - y) ** 2 + (xx - x) ** 2 < r ** 2] = RED_CELL
    for (x, y, r) in nucleus:
        img[(yy - y) ** 2 + (xx - x) ** 2 < r ** 2] = NUCLEUS
    return img


def test_locates_the_nucleus_not_the_red_cells():
    box = framing.locate_cell(smear())
    assert box is not None
    assert abs(box.cx - 250) < 5 and abs(box.cy - 60) < 5
    assert 32 < box.extent < 48  # a 40-px disc


def test_lobes_of_one_nucleus_make_one_box():
    lobes = ((140, 120, 9), (156, 112, 9), (170, 124, 9))
    box = framing.locate_cell(smear(nucleus=lobes))
    assert abs(box.cx - 155) < 6 and abs(box.cy - 118) < 6
    assert box.extent > 40  # spans all three lobes, not one


def test_no_stained_nucleus_means_the_whole_image():
    grey = np.full((120, 160, 3), 128, np.uint8)
    assert framing.locate_cell(grey) is None
    np.testing.assert_array_equal(framing.model_input(grey, 64, "cell"), resize_for_model(grey, 64))
    pink_only = smear(nucleus=())
    assert framing.locate_cell(pink_only) is None


def test_framed_square_is_centred_on_the_cell_and_padded_with_background():
    out = framing.frame_cell(smear(), 96)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[48, 48], NUCLEUS, atol=2)  # the nucleus is in the middle
    assert np.abs(out[48, 48 + 45].astype(int) - NUCLEUS).sum() > 60  # ... and does not fill the square
    # Near the top edge, the square reaches outside the image: filled with the border's median colour.
    np.testing.assert_allclose(out[0, 48], BACKGROUND, atol=2)


def test_same_cell_at_two_magnifications_frames_alike():
    small = smear()
    import cv2

    big = cv2.resize(small, (640, 480), interpolation=cv2.INTER_LINEAR)
    a, b = framing.frame_cell(small, 64).astype(int), framing.frame_cell(big, 64).astype(int)
    assert np.abs(a - b).mean() < 12  # whole-image resizing differs by far more: the cell doubles in size
    assert np.abs(resize_for_model(small, 64).astype(int) - framing.frame_cell(small, 64)).mean() > 20


def test_jitter_is_deterministic_under_a_seed_and_bounded():
    a = framing.Jitter.draw(np.random.default_rng(7))
    assert a == framing.Jitter.draw(np.random.default_rng(7))
    draws = [framing.Jitter.draw(np.random.default_rng(s)) for s in range(200)]
    assert len({d.scale for d in draws}) == 200
    assert all(np.exp(-0.15) <= d.scale <= np.exp(0.15) and abs(d.dx) <= 0.06 and abs(d.dy) <= 0.06 for d in draws)
    img = smear()
    np.testing.assert_array_equal(framing.frame_cell(img, 64, a), framing.frame_cell(img, 64, a))


def test_unknown_framing_is_refused():
    with pytest.raises(ValueError, match="unknown framing"):
        framing.model_input(smear(), 64, "nucleus-only")


def test_card_records_framing_and_old_cards_mean_full(tmp_path):
    d = make_tiny_model_dir(tmp_path / "m")
    data = json.loads((d / persistence.CARD_FILE).read_text())
    data.pop("framing")
    (d / persistence.CARD_FILE).write_text(json.dumps(data))
    assert persistence.load_card(d).framing == "full"
    data["framing"] = "hexagon"
    (d / persistence.CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(persistence.ModelError, match="framing 'hexagon'"):
        persistence.load_card(d)
    # A cell model trained with another revision of the framing code is refused, not fed different crops.
    data.update(framing="cell", framing_revision=FRAMING_REVISION - 1)
    (d / persistence.CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(persistence.ModelError, match=f"revision {FRAMING_REVISION - 1}"):
        persistence.load_card(d)
    data["framing_revision"] = FRAMING_REVISION
    (d / persistence.CARD_FILE).write_text(json.dumps(data))
    assert persistence.load_card(d).framing == "cell"


def test_serving_applies_the_cards_framing(tmp_path):
    """A ``cell`` model classifies a field exactly as a ``full`` model classifies the framed cell."""
    from hematovision.serving.classifier import Classifier

    d = make_tiny_model_dir(tmp_path / "m")
    full = Classifier.load(d, backend="keras")
    persistence.update_card(d, lambda c: c.__dict__.update(framing="cell", framing_revision=FRAMING_REVISION))
    cell = Classifier.load(d, backend="keras")
    fields = [smear(), smear(nucleus=((60, 170, 18),))]
    framed = [framing.frame_cell(f, 32) for f in fields]
    np.testing.assert_allclose(cell.predict_proba(fields), full.predict_proba(framed), atol=1e-6)
    assert not np.allclose(cell.predict_proba(fields), full.predict_proba(fields), atol=1e-3)


def test_a_large_photograph_frames_like_its_small_copy():
    import cv2

    small = smear()
    big = cv2.resize(small, (3200, 2400), interpolation=cv2.INTER_LINEAR)  # 10x: takes the area-shrink path
    a, b = framing.frame_cell(small, 64).astype(int), framing.frame_cell(big, 64).astype(int)
    assert np.abs(a - b).mean() < 12
