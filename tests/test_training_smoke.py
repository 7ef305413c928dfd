"""A tiny real training run: resumable cache, fine-tune, calibration, export, evaluation."""

import json

import pytest

from hematovision import persistence
from hematovision.framing import FRAMING_REVISION
from hematovision.inference import Classifier
from hematovision.training import TrainConfig, train_command

pytestmark = pytest.mark.slow


def test_train_command_end_to_end_and_resume(tmp_path, data_root):
    from hematovision.config import weights_path

    if not weights_path(data_root).exists():
        pytest.skip("ImageNet weights not found beside the data root")
    cfg = TrainConfig(input_size=64, limit_per_split=3, head_epochs=1, max_epochs=1, views_per_image={"kaggle": 1, "pbc": 1}, batch_size=16)
    work, out = tmp_path / "work", tmp_path / "model"
    train_command(out, work, cfg, data_root, evaluate=False)
    assert (work / "state.json").exists() and json.loads((work / "state.json").read_text())["phase"] == "done"
    card = persistence.load_card(out)
    assert card.input_size == 64 and card.temperature > 0 and card.training["history"]
    assert card.framing == "cell" and card.framing_revision == FRAMING_REVISION and "nucleus" in card.preprocessing  # the recipe's framing, recorded for serving
    clf = Classifier.load(out)
    assert clf.classes_ == ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    # A second run with the same working directory resumes: nothing is recomputed.
    cached = sorted(p.stat().st_mtime for p in (work / "cache").rglob("*.npy"))
    train_command(tmp_path / "model2", work, cfg, data_root, evaluate=False)
    assert sorted(p.stat().st_mtime for p in (work / "cache").rglob("*.npy")) == cached
