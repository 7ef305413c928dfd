"""Simulated laboratory shifts: sizes, determinism and what each one changes."""

import numpy as np
from test_framing import BACKGROUND, NUCLEUS, smear

from hematovision.evaluation import shifts


def _pbc_like():
    return smear(h=363, w=360, nucleus=((180, 181, 40),), red_cells=((40, 40, 30), (320, 320, 30)))


def test_shapes_and_determinism():
    img = _pbc_like()
    for s in shifts.SHIFTS:
        a, b = s.apply(img), s.apply(img)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, s.name
        np.testing.assert_array_equal(a, b)
    assert shifts.tight_crop(img).shape == (120, 120, 3)
    assert shifts.small_in_field(img).shape == (240, 320, 3)


def test_tight_crop_makes_the_cell_fill_the_image_and_the_field_makes_it_small():
    img = _pbc_like()
    share = lambda x: (np.abs(x.astype(int) - NUCLEUS).sum(axis=2) < 30).mean()  # noqa: E731
    assert share(shifts.tight_crop(img)) > 2 * share(img) > 4 * share(shifts.small_in_field(img))
    field = shifts.small_in_field(img)
    np.testing.assert_allclose(field[0, 0], BACKGROUND, atol=2)  # the field is the image's own background


def test_colour_cast_warms_and_keeps_the_range():
    img = _pbc_like()
    warm = shifts.colour_cast(img)
    assert warm[..., 2].mean() < img[..., 2].mean() and warm[..., 0].mean() >= img[..., 0].mean()
    assert warm.max() <= 255
