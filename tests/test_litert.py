"""LiteRT serving on the tiny model: export, agreement with Keras, backend choice, no TensorFlow import."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import image_bytes, make_tiny_model_dir
from hematovision.imaging.sources import from_bytes
from hematovision.modeling import persistence

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lite_dir(tmp_path_factory) -> Path:
    from hematovision.serving.litert import export_litert

    d = make_tiny_model_dir(tmp_path_factory.mktemp("tiny_litert"))
    export_litert(d)
    return d


def _images(n=12):
    from hematovision.serving.litert import generated_images

    return generated_images(n, seed=3)


def test_export_writes_flatbuffer_and_records_it(lite_dir):
    card = persistence.load_card(lite_dir)
    rec = card.litert
    assert (lite_dir / persistence.LITERT_FILE).is_file()
    assert rec["sha256"] == persistence.sha256_of(lite_dir / persistence.LITERT_FILE)
    assert rec["keras_sha256"] == card.model_sha256
    assert rec["input_shape"] == [1, 32, 32, 3] and rec["max_abs_diff"] <= 1e-4
    assert "LiteRT" in (lite_dir / persistence.CARD_MD).read_text()
    assert json.loads((lite_dir / persistence.CARD_FILE).read_text())["litert"]["sha256"] == rec["sha256"]


def test_litert_probabilities_match_keras(lite_dir):
    from hematovision.serving.litert import check_litert

    assert check_litert(lite_dir, _images()) <= 1e-4


def test_classifier_picks_litert_and_agrees_with_keras(lite_dir):
    from hematovision.serving.classifier import Classifier

    lite = Classifier.load(lite_dir, batch_size=5)
    keras_clf = Classifier.load(lite_dir, batch_size=5, backend="keras")
    assert lite.backend == "litert" and keras_clf.backend == "keras"
    imgs = _images(13)  # batches of 5, 5 and 3
    p_lite, p_keras = lite.predict_proba(imgs), keras_clf.predict_proba(imgs)
    assert p_lite.shape == (13, 4) and np.max(np.abs(p_lite - p_keras)) <= 1e-4
    inputs = [from_bytes(f"{k}.png", image_bytes(seed=k)) for k in range(7)] + [
        from_bytes("bad.jpg", b"\xff\xd8\xff junk")
    ]
    a, b = list(lite.classify(inputs)), list(keras_clf.classify(inputs))
    assert [p.file for p in a] == [p.file for p in b] == [i.name for i in inputs]
    assert [p.predicted_class for p in a] == [p.predicted_class for p in b]
    assert [p.error for p in a] == [p.error for p in b] and not a[-1].ok
    assert max(abs(x - y) for p, q in zip(a[:-1], b[:-1]) for x, y in zip(p.probabilities, q.probabilities)) <= 1e-4
    # the Keras network stays available (Grad-CAM, training), loaded on demand
    assert lite.network.name == "tiny" and lite.backend == "litert"


def test_runtime_runs_fixed_and_dynamic_batch_flatbuffers(lite_dir, tmp_path):
    from hematovision.serving import litert

    net = persistence.load_keras_model(lite_dir)
    x = np.random.default_rng(0).uniform(0, 255, (7, 32, 32, 3)).astype(np.float32)
    ref = litert.keras_probabilities(net, x)
    for batch in (None, 1, 4):  # 4: the last slice is padded
        path = tmp_path / f"b{batch}.tflite"
        path.write_bytes(litert.convert(net, 32, batch))
        rt = litert.LiteRTRuntime(path)
        assert np.max(np.abs(rt(x) - ref)) <= 1e-4 and np.max(np.abs(rt(x[:2]) - ref[:2])) <= 1e-4
    with pytest.raises(ValueError, match="expects"):
        rt(np.zeros((1, 16, 16, 3), np.float32))


def test_parallel_interpreters_split_a_batch_without_changing_results(lite_dir, tmp_path):
    from hematovision.serving import litert

    net = persistence.load_keras_model(lite_dir)
    x = np.random.default_rng(1).uniform(0, 255, (9, 32, 32, 3)).astype(np.float32)
    path = tmp_path / "b1.tflite"
    path.write_bytes(litert.convert(net, 32, 1))
    one = litert.LiteRTRuntime(path, num_threads=2, parallel=1)
    two = litert.LiteRTRuntime(path, num_threads=2, parallel=2)
    assert two.parallel == 2 and one.parallel == 1
    assert np.array_equal(two(x[:1]), one(x[:1])) and two._extra == []  # one image: no second interpreter yet
    assert np.array_equal(two(x), one(x))  # same flat-buffer, same kernels: bit-identical, in order
    assert len(two._extra) == 1


def test_mismatching_flatbuffer_falls_back_to_keras(lite_dir, tmp_path, caplog):
    """Documented choice: a flat-buffer that does not match the card is ignored (warning logged), Keras serves."""
    from hematovision.serving.classifier import Classifier

    bad = tmp_path / "bad"
    shutil.copytree(lite_dir, bad)
    data = bytearray((bad / persistence.LITERT_FILE).read_bytes())
    data[-1] ^= 0xFF
    (bad / persistence.LITERT_FILE).write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        clf = Classifier.load(bad)
    assert clf.backend == "keras" and "sha256" in caplog.text
    with pytest.raises(persistence.ModelError, match="sha256"):
        Classifier.load(bad, backend="litert")
    # no flat-buffer at all: Keras, silently
    (bad / persistence.LITERT_FILE).unlink()
    assert Classifier.load(bad).backend == "keras"


def test_flatbuffer_of_another_keras_model_is_not_used(lite_dir, tmp_path):
    from hematovision.serving.classifier import Classifier

    other = tmp_path / "other"
    shutil.copytree(lite_dir, other)
    persistence.update_card(other, lambda c: c.litert.update(keras_sha256="0" * 64))
    assert Classifier.load(other).backend == "keras"


def test_litert_load_does_not_import_tensorflow(lite_dir):
    code = (
        "from hematovision.serving.classifier import Classifier; import numpy as np; "
        f"c = Classifier.load(r'{lite_dir}'); "
        "c.predict_proba([np.zeros((40, 40, 3), np.uint8)] * 4); import sys; print('tensorflow' in sys.modules, "
        "'keras' in sys.modules, c.backend)"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "litert"]
    assert (
        "XNNPACK" not in r.stderr
    )  # the runtime's native INFO line (every interpreter, the second one too) stays off the terminal


def test_cli_export_and_classify(tmp_path):
    d = make_tiny_model_dir(tmp_path / "m")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "HEMATOVISION_DATA": str(tmp_path / "no-data")}
    r = subprocess.run(
        [sys.executable, "-m", "hematovision", "export-litert", "--model", str(d)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "max abs difference" in r.stdout and (d / persistence.LITERT_FILE).is_file()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(image_bytes("JPEG"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hematovision",
            "classify",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "o.csv"),
            "--model",
            str(d),
            "--quiet",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "1 images: 1 classified" in r.stderr


def test_export_litert_help():
    r = subprocess.run(
        [sys.executable, "-m", "hematovision", "export-litert", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "usage" in r.stdout and "--model" in r.stdout
