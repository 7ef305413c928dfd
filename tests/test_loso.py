"""Leave-one-source-out on a tiny real run: every variant and held-out source, resumable, recorded."""

import json
import shutil

import pytest

from conftest import make_tiny_model_dir
from hematovision.modeling import persistence
from hematovision.training import loso
from hematovision.training.recipe import TrainConfig, clean_cache_key, view_cache_key

pytestmark = pytest.mark.slow


def test_variants_share_clean_caches_but_not_view_caches():
    cfg = TrainConfig()
    base, robust, strong, cell = (loso.VARIANTS[v](cfg) for v in ("baseline", "robust", "strong", "strong_cell"))
    assert len({view_cache_key(robust), view_cache_key(base), view_cache_key(strong), view_cache_key(cell)}) == 4
    assert view_cache_key(cfg) == view_cache_key(cell)  # the shipped recipe
    assert (
        clean_cache_key(base) == clean_cache_key(strong) != clean_cache_key(cell) == clean_cache_key(cfg)
    )  # framing changes clean views too
    assert base.framing == strong.framing == "full" and cell.framing == "cell"
    from dataclasses import replace

    assert view_cache_key(replace(cfg, train_on=("pbc",), max_epochs=3)) == view_cache_key(
        cfg
    )  # LOSO reuses the main run's cache
    replicate = replace(cfg, fit_seed=7)  # a replicate of a run: its own fitting seed, the same cached views
    assert view_cache_key(replicate) == view_cache_key(cfg) and clean_cache_key(replicate) == clean_cache_key(cfg)
    assert (replicate.fitting_seed, cfg.fitting_seed) == (7, cfg.seed)


def test_tiny_loso_run_resumes_and_is_recorded(tmp_path, data_root):
    from hematovision.config import weights_path

    if not weights_path(data_root).exists():
        pytest.skip("ImageNet weights not found beside the data root")
    cfg = TrainConfig(
        input_size=48,
        limit_per_split=2,
        head_epochs=1,
        max_epochs=1,
        views_per_image={"kaggle": 1, "pbc": 1},
        batch_size=8,
    )
    work = tmp_path / "loso"
    results = loso.run_loso(work, cfg, data_root, variants=("robust",))
    assert [(r.variant, r.held_out) for r in results] == [("robust", "kaggle"), ("robust", "pbc")]
    for r in results:
        assert r.trained_on != r.held_out and r.held_out_test == loso.HELD_OUT_TEST[r.held_out]
        assert 0 <= r.held_out_accuracy <= 1 and set(r.test_accuracy) >= {"kaggle_test", "pbc_test"}
    # A second call finds every run in loso.json and trains nothing.
    stamp = (work / "loso.json").stat().st_mtime
    again = loso.run_loso(work, cfg, data_root, variants=("robust",))
    assert again == results and (work / "loso.json").stat().st_mtime == stamp
    from dataclasses import replace

    baseline = [replace(r, variant="baseline", held_out_accuracy=r.held_out_accuracy - 0.2) for r in results]
    block = loso.summary(baseline + results, cfg)
    assert block["gain_over_baseline"]["robust"] == pytest.approx({"kaggle": 0.2, "pbc": 0.2})
    assert "| robust | pbc | kaggle (kaggle_test) |" in loso.table(results)
    model = make_tiny_model_dir(tmp_path / "model")
    (model / persistence.EVALUATION_FILE).write_text(json.dumps({"sets": {}}))
    loso.record_in_model(model, block)
    assert [
        r["variant"]
        for r in json.loads((model / persistence.EVALUATION_FILE).read_text())["leave_one_source_out"]["runs"]
    ] == ["baseline"] * 2 + ["robust"] * 2
    assert persistence.load_card(model).training["leave_one_source_out"] == json.loads(json.dumps(block))
    assert "## Leave-one-source-out" in (model / persistence.CARD_MD).read_text()
    points = loso.adaptation_curve(results, cfg, data_root, per_class=(1, 2), draws=1)
    assert [(p.held_out, p.per_class) for p in points] == [
        ("kaggle", 0),
        ("kaggle", 1),
        ("kaggle", 2),
        ("pbc", 0),
        ("pbc", 1),
        ("pbc", 2),
    ]
    assert all(0 <= p.mean_accuracy <= 1 for p in points)
    shutil.rmtree(work)


def test_draw_takes_one_image_per_cell_then_further_copies():
    """A lab labels distinct cells: a draw spans as many cells as it can before repeating one,
    and a class with fewer cells than asked (Kaggle TRAIN has 15 monocyte fields) still gets n images."""
    from pathlib import Path

    import numpy as np

    from hematovision.data.datasets import LabeledImage

    pool = [
        LabeledImage(Path(f"/x/{g}_{k}.jpg"), f"{g}_{k}.jpg", "monocyte", "kaggle", "train", f"cell{g}")
        for g in range(4)
        for k in range(3)
    ]
    five = loso._draw(pool, 5, np.random.default_rng(0))
    assert len(five) == 5 and len(set(five)) == 5
    assert loso.distinct_cells(five[:4]) == 4 and loso.distinct_cells(five) == 4
    assert loso._draw(pool, 5, np.random.default_rng(0)) == five  # deterministic under a seed
    assert len(loso._draw(pool, 50, np.random.default_rng(1))) == 12  # every image once, no more
    assert loso.distinct_cells(loso._draw(pool, 3, np.random.default_rng(2))) == 3


def test_a_re_evaluation_keeps_the_records_it_does_not_write_unless_they_name_another_model():
    from hematovision.evaluation.evaluate import kept_records

    old = {
        "model_version": "m@1", "sets": {"x": 1},
        "leave_one_source_out": {"runs": []},  # about the recipe: no version
        "stain_shift_suite": {"model_version": "m@1", "results": []},
        "stain_shift_suite_previous_model": {"model_version": "m@0"},  # a named comparison
        "smear_fields": {"model_version": "m@0"},  # another network's predictions
        "trust": {"threshold": 2.0},
    }
    kept = kept_records(old, {"model_version": "m@1", "sets": {"y": 2}})
    assert set(kept) == {"leave_one_source_out", "stain_shift_suite", "stain_shift_suite_previous_model", "trust"}
