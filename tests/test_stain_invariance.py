"""The stain-invariance work: any-stain framing, stain-vector and camera augmentation, the stain-shift suite."""

import json
from dataclasses import asdict

import numpy as np
import pytest
from test_framing import smear

from conftest import make_tiny_model_dir
from hematovision.evaluation import shift_suite, shifts
from hematovision.imaging import augment as aug
from hematovision.imaging import framing

BROWN_ON_YELLOW = dict(background=(236, 222, 150), red=(214, 150, 110), nucleus=(150, 70, 40))


def _recoloured(background, red, nucleus, h=240, w=320, at=(250, 60, 20)):
    """A field like :func:`test_framing.smear` in another stain: a nucleus at ``at`` (x, y, r) and two red cells."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = background
    yy, xx = np.mgrid[:h, :w]
    for x, y, r in ((80, 150, 30), (160, 90, 28)):
        img[(yy - y) ** 2 + (xx - x) ** 2 < r**2] = red
    x, y, r = at
    img[(yy - y) ** 2 + (xx - x) ** 2 < r**2] = nucleus
    return img


def test_a_brown_nucleus_on_a_yellow_ground_is_missed_by_b_minus_g_and_found_by_density():
    img = _recoloured(**BROWN_ON_YELLOW)
    assert framing.locate_cell(img) is None  # the Romanowsky rule sees nothing blue here
    box = framing.locate_cell_density(img)
    assert box is not None and abs(box.cx - 250) < 6 and abs(box.cy - 60) < 6 and 30 < box.extent < 50
    # so the two framings differ exactly where B - G gives up
    assert not np.array_equal(framing.model_input(img, 64, "cell"), framing.model_input(img, 64, "cell_any_stain"))


def test_any_stain_framing_equals_cell_framing_where_b_minus_g_finds_the_nucleus():
    img = smear()
    np.testing.assert_array_equal(framing.model_input(img, 64, "cell"), framing.model_input(img, 64, "cell_any_stain"))


def test_density_locator_ignores_black_fill_and_blank_images():
    img = _recoloured(**BROWN_ON_YELLOW)
    img[:, :40] = 0  # a rotated field's black corner
    box = framing.locate_cell_density(img)
    assert box is not None and abs(box.cx - 250) < 6
    assert framing.locate_cell_density(np.full((100, 100, 3), 200, np.uint8)) is None


def test_greyscale_cell_is_framed_the_same_as_its_colour_original():
    img = _recoloured(**BROWN_ON_YELLOW)
    grey = shifts.greyscale(img)
    a, b = framing.locate_cell_density(img), framing.locate_cell_density(grey)
    assert abs(a.cx - b.cx) < 3 and abs(a.cy - b.cy) < 3


def test_new_augmentations_are_seeded_and_change_colour_not_shape():
    img = smear(h=96, w=96, nucleus=((48, 48, 15),), red_cells=((15, 15, 10),))
    cfg = aug.AugmentConfig(
        rotate=False, zoom=(1.0, 1.0), shift=0.0, stain_angle=25.0, cast=0.2, gamma=0.6, grey_prob=0.0
    )
    a = aug.augment(img, np.random.default_rng(3), cfg)
    b = aug.augment(img, np.random.default_rng(3), cfg)
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.abs(a.astype(int) - img).mean() > 2  # the colours moved


def test_grey_prob_one_gives_grey_views_and_zero_never():
    img = smear(h=64, w=64, nucleus=((32, 32, 10),), red_cells=())
    grey = aug.light_and_camera(img, np.random.default_rng(0), aug.AugmentConfig(grey_prob=1.0))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    colour = aug.light_and_camera(img, np.random.default_rng(0), aug.AugmentConfig(grey_prob=0.0))
    np.testing.assert_array_equal(colour, img)


def test_turned_stain_vectors_stay_unit_positive_and_within_the_angle():
    rng = np.random.default_rng(1)
    v = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
    for deg in (5.0, 25.0):
        t = aug._turn(v, deg, rng)
        assert abs(np.linalg.norm(t) - 1) < 1e-9 and (t > 0).all()
        assert np.degrees(np.arccos(np.clip(t @ v, -1, 1))) <= deg + 1e-6


def test_restain_with_the_reference_stains_is_close_to_identity_and_other_stains_move_the_hue():
    img = smear(h=80, w=80, nucleus=((40, 40, 15),), red_cells=((12, 12, 8),))
    same = shifts.restain(img, shifts._REF_STAINS)
    assert np.abs(same.astype(int) - img).mean() < 3
    rapid = shifts.restain(img, shifts.RAPID_STAINS, 1.0, (0.0, 0.05, 0.35))
    nucleus = rapid[40, 40].astype(int)
    assert nucleus[0] > nucleus[2]  # the nucleus turns from blue-purple to reddish-brown
    assert rapid[2, 2, 2] < rapid[2, 2, 0]  # and the ground yellow


def test_held_out_families_lie_outside_the_training_ranges():
    """The suite's held-out re-stainings are farther from the reference than training ever turns a stain."""
    from hematovision.training.recipe import stain_invariant_augment

    max_turn = stain_invariant_augment()["pbc"]["stain_angle"]
    for stains in (shifts.RAPID_STAINS, shifts.PALE_BLUE_STAINS):
        assert max(shifts.stain_angles(stains)[:2]) > max_turn and min(shifts.stain_angles(stains)[:2]) > max_turn
    names = {f.name: f for f in shifts.SUITE}
    assert names["hue_60"].held_out and not names["hue_20"].held_out and not names["greyscale"].held_out


def test_every_family_keeps_dtype_and_is_deterministic():
    img = smear(h=363, w=360, nucleus=((180, 181, 40),), red_cells=((40, 40, 30),))
    for fam in shifts.SUITE:
        a, b = fam.apply(img, 1), fam.apply(img, 1)
        assert a.dtype == np.uint8 and a.ndim == 3, fam.name
        np.testing.assert_array_equal(a, b)
        if not fam.geometry:
            assert a.shape == img.shape, fam.name


def test_run_family_scores_per_class_recall(tiny_model_dir):
    from hematovision.serving.classifier import Classifier

    clf = Classifier.load(tiny_model_dir)
    imgs = [smear(h=64, w=64, nucleus=((32, 32, 10),), red_cells=()) for _ in range(4)]
    labels = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    r = shift_suite.run_family(clf, shifts.SUITE[0], imgs, labels, "synthetic")
    pred = clf.predict_proba(imgs).argmax(1)
    assert r.n == 4 and r.accuracy == pytest.approx(float((pred == np.arange(4)).mean()))
    assert set(r.recall) == set(labels) and all(v in (0.0, 1.0) for v in r.recall.values())


def test_views_flag_is_parsed_and_bad_values_get_one_line(capsys):
    from hematovision.cli import UsageError, _views

    assert _views("pbc=4", {"kaggle": 2, "pbc": 2}) == {"kaggle": 2, "pbc": 4}
    assert _views(None, {"kaggle": 2}) == {"kaggle": 2}
    with pytest.raises(UsageError, match="--views"):
        _views("pbc:4", {"kaggle": 2})


def test_suite_table_and_record(tmp_path):
    model = make_tiny_model_dir(tmp_path / "m")
    (model / "evaluation.json").write_text(json.dumps({"model_version": "x"}))
    report = {
        "model_version": "tiny",
        "families": [],
        "mean_accuracy_held_out": 0.5,
        "results": [
            {
                "family": "none",
                "test_set": "pbc_test",
                "held_out": False,
                "n": 4,
                "accuracy": 1.0,
                "ci95": [0.5, 1],
                "recall": {"eosinophil": 1.0},
            },
            {
                "family": "hue_60",
                "test_set": "pbc_test",
                "held_out": True,
                "n": 4,
                "accuracy": 0.5,
                "ci95": [0.1, 0.9],
                "recall": {"eosinophil": 0.0},
            },
        ],
    }
    md = shift_suite.table([report])
    assert "| hue_60 | yes | pbc_test | 4 | 50.0% (eosinophil 0%) |" in md and "**50.0%**" in md
    shift_suite.record_in_model(model, report)
    assert json.loads((model / "evaluation.json").read_text())["stain_shift_suite"]["mean_accuracy_held_out"] == 0.5


def test_mild_views_keep_the_geometry_and_switch_every_colour_change_off():
    from hematovision.training import recipe

    mild = recipe.mild_augment(recipe.stain_invariant_augment())
    strong = recipe.stain_invariant_augment()
    for source, a in mild.items():
        assert a["zoom"] == strong[source]["zoom"] and a["shift"] == strong[source]["shift"] and a["rotate"]
        assert a["hue"] == a["saturation"] == a["stain_angle"] == a["grey_prob"] == a["cast"] == a["gamma"] == 0
        assert a["blur_prob"] == a["jpeg_prob"] == a["hed_scale"] == 0
    cfg = recipe.TrainConfig(mild_views={"pbc": 1})
    assert recipe.mild_cache_key(cfg) != recipe.mild_cache_key(recipe.TrainConfig(mild_views={"pbc": 2}))
    rgb = np.full((40, 40, 3), 200, np.uint8)
    rgb[10:30, 10:30] = (120, 60, 160)
    out = aug.augment(rgb, np.random.default_rng(0), aug.AugmentConfig(**{**mild["pbc"], "zoom": (1.0, 1.0),
                                                                          "rotate": False, "shift": 0.0}))
    assert np.array_equal(out, rgb)  # nothing but geometry, and the geometry switched off here


def test_epoch_views_show_mild_views_at_about_their_share_and_only_where_an_image_has_them():
    from hematovision.training.recipe import _epoch_arrays

    n = 2000
    feats = np.arange(3 * n)[:, None]
    view_index = [[i, n + i] for i in range(n)]
    mild_index = [[2 * n + i] if i % 2 == 0 else [] for i in range(n)]
    rows = _epoch_arrays(feats, feats[:, 0], feats[:, 0], view_index, n, 3, mild_index, 0.25, seed=1)[0][:, 0]
    mild_rows = rows >= 2 * n
    assert not mild_rows[1::2].any()  # odd images have no mild view
    assert 0.2 < mild_rows[0::2].mean() < 0.3
    assert (rows[~mild_rows] == [view_index[i][1] for i in np.flatnonzero(~mild_rows)]).all()  # rotation unchanged
    plain = _epoch_arrays(feats, feats[:, 0], feats[:, 0], view_index, n, 3)[0][:, 0]
    assert (plain == n + np.arange(n)).all()  # without mild views: exactly as before


def test_shuffled_view_order_reaches_every_view_within_the_first_epochs():
    """view_order="shuffle": with 8 views an image shows views past the fourth before epoch 4 (the cycle never does),
    draws differ between epochs, and the order is reproducible."""
    from hematovision.training.recipe import _epoch_arrays

    n, v = 500, 8
    feats = np.arange(v * n)[:, None]
    view_index = [[k * n + i for k in range(v)] for i in range(n)]
    def rows(e, order="cycle"):
        return _epoch_arrays(feats, feats[:, 0], feats[:, 0], view_index, n, e, view_order=order)[0][:, 0]

    seen = np.concatenate([rows(e, "shuffle") for e in range(4)])
    assert (seen >= 4 * n).mean() > 0.4  # about half the draws come from views 4-7
    cycle = np.concatenate([rows(e) for e in range(4)])
    assert (cycle < 4 * n).all()
    e0, e1 = rows(0, "shuffle"), rows(1, "shuffle")
    assert (e0 != e1).mean() > 0.8
    assert (rows(0, "shuffle") == e0).all()
    assert all(e0[i] in view_index[i] for i in range(n))
    with pytest.raises(ValueError, match="view_order"):
        rows(0, "random")


def test_weight_average_is_the_mean_of_the_epochs_added_and_survives_a_restart(tmp_path):
    """SWA (TrainConfig.average_from): the running mean kept on disk equals the plain mean of the epochs' weights,
    and a fresh RunFiles (a resumed run) continues the same mean."""
    from hematovision.training.recipe import RunFiles, TrainState

    class Net:  # what RunFiles needs of a Keras model
        def __init__(self):
            self.w = []

        def get_weights(self):
            return [a.copy() for a in self.w]

        def set_weights(self, w):
            self.w = [a.copy() for a in w]

    rng = np.random.default_rng(0)
    epochs = [[rng.normal(size=(3, 2)), rng.normal(size=4)] for _ in range(5)]
    net, state = Net(), TrainState()
    for w in epochs:
        net.set_weights(w)
        RunFiles(tmp_path).add_to_average(net, state)  # a new RunFiles each epoch, as after a restart
    assert state.averaged == 5
    out = Net()
    RunFiles(tmp_path).load_average(out)
    for got, want in zip(out.w, [np.mean([e[i] for e in epochs], axis=0) for i in range(2)]):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_extra_views_are_the_views_a_run_with_more_views_would_draw_cached_apart():
    from hematovision.data.datasets import LabeledImage
    from hematovision.training import recipe

    imgs = [LabeledImage(None, f"{s}/{k}.png", "monocyte", s, "train", f"{s}{k}", "") for s in ("pbc", "kaggle")
            for k in range(3)]
    base = recipe.TrainConfig(views_per_image={"kaggle": 2, "pbc": 4}, extra_views={"pbc": 4})
    more = recipe.TrainConfig(views_per_image={"kaggle": 2, "pbc": 8})
    got = sorted((i.relpath, v) for i, v in recipe.training_items(imgs, base) + recipe.extra_items(imgs, base))
    assert got == sorted((i.relpath, v) for i, v in recipe.training_items(imgs, more))
    assert recipe.extra_cache_key(base) != recipe.view_cache_key(base)  # the recipe's own cache is untouched
    assert recipe.view_cache_key(base) == recipe.view_cache_key(recipe.TrainConfig(views_per_image={"kaggle": 2,
                                                                                                     "pbc": 4}))


def test_deep_phase_views_are_full_colour_views_and_only_the_mild_range_is_mild(tmp_path):
    """The deep phase draws its views by number far above the cached ones; those must be the recipe's colour views
    (a defect once made every number from the mild base up a geometry-only view)."""
    import cv2

    from hematovision.data.datasets import LabeledImage
    from hematovision.training import recipe
    from hematovision.training.deep import DEEP_VIEW_BASE, VAL_VIEW

    rgb = np.full((64, 64, 3), 210, np.uint8)
    rgb[16:48, 16:48] = (120, 60, 160)
    path = tmp_path / "cell.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    grey_only = asdict(aug.AugmentConfig.none()) | {"grey_prob": 1.0}
    cfg = recipe.TrainConfig(input_size=32, framing="full", augment={"pbc": grey_only})
    img = LabeledImage(path=path, label="monocyte", source="pbc", split="train", relpath="pbc/cell.png", group="g")

    def is_grey(view):
        x = recipe.training_view(img, view, cfg).astype(np.float32)
        return float(np.abs(x - x.mean(axis=-1, keepdims=True)).max()) < 1.0

    assert not is_grey(-1)
    for view in (0, recipe.MILD_VIEW_END, DEEP_VIEW_BASE, DEEP_VIEW_BASE + 7, VAL_VIEW):
        assert not recipe.is_mild_view(view) and is_grey(view), view
    for view in (recipe.MILD_VIEW_BASE, recipe.MILD_VIEW_END - 1):
        assert recipe.is_mild_view(view) and not is_grey(view), view
