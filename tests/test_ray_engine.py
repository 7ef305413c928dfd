"""``classify --engine ray``: the same rows as the default engine, on one local Ray cluster (num_cpus=2)
started once for the module; errors as rows; an interrupted run resumed with nothing lost or duplicated.

Runs on the shipped model's LiteRT flat-buffer (no TensorFlow in the actors) and a few generated images."""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import image_bytes
from hematovision.cli import main
from hematovision.modeling import persistence
from hematovision.reports.results_file import ResultsFileError, ResultsWriter, result_columns
from hematovision.serving import Prediction, ray_engine
from hematovision.stats import round_threshold

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models"


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the whole module (starting one costs seconds of the CI budget)."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-ray.txt)")
    try:
        ray_engine.connect(ray_engine.RayOptions(num_cpus=2))  # as the CLI starts one: loopback only
    except ray_engine.RayEngineError as exc:  # no room for the object store, no /dev/shm, ...
        pytest.skip(f"Ray cannot start a local cluster here: {exc}")
    import ray

    assert ray.cluster_resources()["CPU"] == 2
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """A folder (with a sub-folder, a note and a broken image) and a zip (with a broken member)."""
    root = tmp_path_factory.mktemp("ray_inputs")
    folder = root / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(8):
        (folder / f"cell_{i:02d}.png").write_bytes(image_bytes("PNG", size=(96 + 8 * i, 80), seed=i))
    (folder / "sub" / "b.jpg").write_bytes(image_bytes("JPEG", seed=20))
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image: no row")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("c.bmp", image_bytes("BMP", seed=30))
        zf.writestr("broken.png", b"\x89PNG\r\n\x1a\n truncated")
        zf.writestr("d.tif", image_bytes("TIFF", seed=31))
    (root / "batch.zip").write_bytes(buf.getvalue())
    return [str(folder), str(root / "batch.zip"), str(root / "missing.png")]


@pytest.fixture(scope="module")
def default_csv(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("default") / "default.csv"
    assert main(["classify", *inputs, "--model", str(MODEL), "--out", str(out), "--quiet"]) == 0
    return out


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    assert [r["file"] for r in got] == [r["file"] for r in want]
    assert [r["predicted_class"] for r in got] == [r["predicted_class"] for r in want]
    assert [r["error"] for r in got] == [r["error"] for r in want]
    probs = [k for k in want[0] if k.startswith("p_")]
    for g, w in zip(got, want):
        for k in probs + ["confidence"]:
            if w[k] == "":
                assert g[k] in ("", None) or math.isnan(float(g[k]))
            else:
                assert abs(float(g[k]) - float(w[k])) <= 1e-4, (w["file"], k)


def test_ray_engine_interrupted_run_resumes_into_the_default_engines_csv(ray_cluster, inputs, default_csv, tmp_path):
    """The same rows and formatting as the default engine (byte for byte), errors as single rows, and a run cut
    short then resumed with nothing lost or duplicated. (One test: every Ray pipeline costs seconds of CI.)"""
    card = persistence.load_card(MODEL)
    out = tmp_path / "ray.csv"
    threshold = round_threshold(card.default_threshold)  # the threshold in force, as the CLI applies it
    with pytest.raises(KeyboardInterrupt), ResultsWriter(out, card.classes, threshold, card.version) as w:
        for k, p in enumerate(ray_engine.classify(inputs, MODEL, options=ray_engine.RayOptions(workers=1))):
            w.write(p)
            if k == 4:
                raise KeyboardInterrupt  # Ctrl-C after five rows
    assert len(rows(out)) == 5
    with open(out, "a") as fh:
        fh.write(rows(default_csv)[5]["file"] + ",neutro")  # a row torn by a kill mid-write
    assert main(
        ["classify", *inputs, "--model", str(MODEL), "--engine", "ray", "--out", str(out), "--resume", "--quiet"]
    ) == 0
    got, want = rows(out), rows(default_csv)
    assert len(want) == 14  # 10 images in the folder (the note has no row), 3 zip members, 1 missing path
    assert_same_rows(got, want)  # every input once, in input order, the same class, probabilities within 1e-4
    assert out.read_text() == default_csv.read_text()  # same columns, same formatting
    errors = {Path(r["file"]).name: r["error"] for r in got if r["error"]}
    assert sorted(errors) == ["broken.jpg", "broken.png", "missing.png"]  # one row each, the job went on
    assert all(r["predicted_class"] for r in got if not r["error"])
    # A second resume finds nothing to do and changes nothing.
    assert main(
        ["classify", *inputs, "--model", str(MODEL), "--engine", "ray", "--out", str(out), "--resume", "--quiet"]
    ) == 0
    assert out.read_text() == default_csv.read_text()


def test_ray_engine_same_rows_as_default_into_parquet_from_file_uris(ray_cluster, inputs, default_csv, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "results.parquet"
    uris = [f"file://{inputs[0]}", inputs[1], f"file://{inputs[2]}"]  # the folder and the missing file as URIs
    assert main(["classify", *uris, "--model", str(MODEL), "--engine", "ray", "--out", str(out), "--quiet"]) == 0
    assert out.is_dir() and [f.name for f in out.iterdir()] == ["part-000000.parquet"]
    table = pq.read_table(out)
    want = rows(default_csv)
    assert table.column_names == list(want[0])
    got = table.to_pylist()
    for r in got:
        r["file"] = r["file"].removeprefix("file://")
    assert_same_rows(got, want)  # same files, classes and errors; probabilities within 1e-4


def test_results_writer_parquet_resume_appends_parts(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    classes = ["a", "b"]
    out = tmp_path / "r.parquet"
    with ResultsWriter(out, classes, 0.5, "v1") as w:
        w.write(Prediction("x.png", "a", 0.9, (0.9, 0.1), False))
    with ResultsWriter(out, classes, 0.5, "v1", resume=True) as w:
        assert w.done("x.png") and not w.done("y.png") and w.kept == 1
        w.write(Prediction("y.png", error="unreadable"))
    assert sorted(f.name for f in out.iterdir()) == ["part-000000.parquet", "part-000001.parquet"]
    table = pq.read_table(out)
    assert table.column("file").to_pylist() == ["x.png", "y.png"]
    assert table.column("error").to_pylist() == ["", "unreadable"]


def test_results_writer_refuses_to_resume_another_models_csv(tmp_path):
    out = tmp_path / "r.csv"
    out.write_text(",".join(result_columns(["a", "b"])) + "\n")
    with pytest.raises(ResultsFileError, match="other columns"):
        ResultsWriter(out, ["a", "b", "c"], 0.5, "v1", resume=True)
    assert main(["classify", str(tmp_path), "--out", str(tmp_path / "x.csv"), "--resume"]) == 2  # needs --engine ray


def test_default_engine_never_imports_ray(inputs, tmp_path):
    code = (
        "import sys; from hematovision.cli import main; "
        f"main(['classify', {inputs[0]!r}, '--model', {str(MODEL)!r}, '--out', {str(tmp_path / 'd.csv')!r}, "
        "'--quiet']); print('ray' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    assert len(rows(tmp_path / "d.csv")) == 10


def test_ray_engine_holds_a_shifted_batch_as_the_default_engine_does(ray_cluster, tmp_path):
    """12 noise images (unfamiliar) and 12 generated blobs (familiar, confident): the batch is called shifted and
    held by both engines, into the same CSV, and into Parquet parts with the same flags."""
    pq = pytest.importorskip("pyarrow.parquet")
    import numpy as np
    from PIL import Image

    folder = tmp_path / "batch"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"noise_{i:02d}.png")
        (folder / f"blob_{i:02d}.png").write_bytes(image_bytes("PNG", size=(96, 80), seed=100 + i))
    default, ray_csv, ray_pq = tmp_path / "default.csv", tmp_path / "ray.csv", tmp_path / "ray.parquet"
    assert main(["classify", str(folder), "--model", str(MODEL), "--out", str(default), "--quiet"]) == 0
    want = rows(default)
    assert all(r["flagged"] == "True" for r in want)
    assert {r["flag_reason"] for r in want} == {"unfamiliar", "batch_shift"}
    for out in (ray_csv, ray_pq):
        args = ["classify", str(folder), "--model", str(MODEL), "--engine", "ray", "--out", str(out), "--quiet"]
        assert main(args) == 0
    assert ray_csv.read_text() == default.read_text()
    table = pq.read_table(ray_pq).to_pandas()
    assert list(table["flagged"]) == [True] * 24 and list(table["flag_reason"]) == [r["flag_reason"] for r in want]


def test_ray_engine_refuses_a_stream_out_in_one_line(tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-ray.txt)")
    (tmp_path / "a.png").write_bytes(image_bytes("PNG", seed=1))
    assert main(["classify", str(tmp_path), "--model", str(MODEL), "--engine", "ray", "--out", "/dev/stdout"]) == 2
    assert "--engine ray writes to a file" in capsys.readouterr().err
