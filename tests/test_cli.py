"""The command line, run as users run it: python -m hematovision ..."""

import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import image_bytes

REPO = Path(__file__).resolve().parent.parent


def run(*args, model=None, env_extra=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if model:
        env["HEMATOVISION_MODEL"] = str(model)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "hematovision", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_classify_folder_and_zip_with_corrupt_files(tmp_path, tiny_model_dir):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(image_bytes())
    (folder / "sub" / "b.jpg").write_bytes(image_bytes("JPEG", seed=1))
    (folder / "sub" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("c.bmp", image_bytes("BMP", seed=2))
        zf.writestr("broken.png", b"\x89PNG\r\n\x1a\n truncated")
        zf.writestr("d.tif", image_bytes("TIFF", seed=3))
    (tmp_path / "batch.zip").write_bytes(buf.getvalue())
    out = tmp_path / "r.csv"
    r = run(
        "classify",
        str(folder),
        str(tmp_path / "batch.zip"),
        "--out",
        str(out),
        "--threshold",
        "0.5",
        "--quiet",
        model=tiny_model_dir,
    )
    assert r.returncode == 0, r.stderr
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    for col in [
        "file",
        "predicted_class",
        "confidence",
        "p_eosinophil",
        "p_lymphocyte",
        "p_monocyte",
        "p_neutrophil",
        "flagged",
        "error",
    ]:
        assert col in rows[0]
    errors = {Path(r["file"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"corrupt.jpg", "broken.png"}
    assert all(r["predicted_class"] for r in rows if not r["error"])
    assert "6 images: 4 classified" in r.stderr


def test_missing_model_is_one_line_and_nonzero(tmp_path):
    r = run("classify", str(tmp_path), "--out", str(tmp_path / "x.csv"), model=tmp_path / "nomodel")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: no model card")
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_arguments_are_rejected(tmp_path, tiny_model_dir):
    r = run("classify", str(tmp_path), "--out", str(tmp_path / "x.csv"), "--threshold", "1.5", model=tiny_model_dir)
    assert r.returncode == 2 and "threshold" in r.stderr
    assert run("classify").returncode == 2


def test_help_for_every_command():
    for cmd in ("classify", "evaluate", "train"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and "usage" in r.stdout


def test_evaluate_labeled_folder(tmp_path, tiny_model_dir):
    for cls in ("Eosinophil", "MONOCYTE", "basophil"):
        (tmp_path / "set" / cls).mkdir(parents=True)
        for k in range(2):
            (tmp_path / "set" / cls / f"{k}.png").write_bytes(image_bytes(seed=k))
    r = run("evaluate", str(tmp_path / "set"), "--out", str(tmp_path / "e.json"), model=tiny_model_dir)
    assert r.returncode == 0, r.stderr
    import json

    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["n_images"] == 4 and len(rep["skipped"]) == 2
    assert sum(map(sum, rep["confusion_matrix"])) == 4


def test_two_thousand_images_stream_through_the_cli(tmp_path, tiny_model_dir):
    """Every one of 2,000 files (one broken) gets its row; memory is measured in benchmarks/, not here."""
    folder = tmp_path / "many"
    folder.mkdir()
    good = image_bytes("PNG", size=(48, 40))
    for k in range(2000):
        (folder / f"{k:04d}.png").write_bytes(good if k != 1234 else b"broken")
    out = tmp_path / "many.csv"
    r = run("classify", str(folder), "--out", str(out), "--quiet", "--batch-size", "64", model=tiny_model_dir)
    assert r.returncode == 0, r.stderr
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(x["file"]).name for x in rows] == [f"{k:04d}.png" for k in range(2000)]
    assert [x["file"] for x in rows if x["error"]] == [str(folder / "1234.png")]


def test_train_records_its_command_line_in_the_card(tmp_path, monkeypatch):
    """The card says how to reproduce the model: the exact ``train`` arguments (the fit itself is
    exercised by test_training_smoke; here it is replaced by a tiny model)."""
    from conftest import make_tiny_model_dir
    from hematovision import cli
    from hematovision.modeling import persistence
    from hematovision.training import recipe

    def fake_train(out, work, cfg, root, **kw):
        assert cfg.framing == "full" and cfg.max_epochs == 3
        return make_tiny_model_dir(out)

    monkeypatch.setattr(recipe, "train_command", fake_train)  # cli calls recipe.train_command
    out = tmp_path / "m"
    assert (
        cli.main(["train", "--out", str(out), "--max-epochs", "3", "--framing", "full", "--data", str(tmp_path)]) == 0
    )
    assert (
        persistence.load_card(out).training["command"]
        == f"python -m hematovision train --out {out} --max-epochs 3 --framing full --data {tmp_path}"
    )


def test_train_refit_from_refuses_a_folder_without_a_model_or_of_another_recipe(tmp_path, capsys):
    """``--refit-from`` borrows a model's calibration and epoch count: a missing card, or a model
    trained at another input size, is a one-line usage error before any training starts."""
    from conftest import make_tiny_model_dir
    from hematovision import cli

    assert (
        cli.main(
            ["train", "--out", str(tmp_path / "m"), "--data", str(tmp_path), "--refit-from", str(tmp_path / "none")]
        )
        != 0
    )
    assert "--refit-from: no model card" in capsys.readouterr().err
    other = make_tiny_model_dir(tmp_path / "tiny")  # a tiny model: no fine-tuning history, another input size
    assert cli.main(["train", "--out", str(tmp_path / "m"), "--data", str(tmp_path), "--refit-from", str(other)]) != 0
    assert "--refit-from:" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
