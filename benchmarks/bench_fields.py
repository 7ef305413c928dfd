"""Whole-field speed: white-cell search + classification of every cell, per field, end to end.

    .venv/bin/python benchmarks/bench_fields.py [--fields 60] [--model DIR] [--data DIR]

Prints (as a markdown table for docs/performance.md):
- 640x480 fields (BCCD JPEGs when the data root has them, else generated fields) through
  ``classify_fields`` (read, decode, detect, crop, frame, network): seconds per field, streamed and one
  field at a time; the detector alone;
- a 4000x3000 JPEG photograph (a generated field, 6.25x the scale) one at a time, and the peak resident
  memory of a fresh process that classifies it;
- ``python -m hematovision classify --fields`` on one field, from the command line to the CSV.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hematovision.config import data_root  # noqa: E402
from hematovision.detection import bccd, detect_white_cells  # noqa: E402
from hematovision.detection.cells import classify_fields  # noqa: E402
from hematovision.detection.synthetic import WhiteCell, make_field  # noqa: E402
from hematovision.imaging.decode import decode_image  # noqa: E402
from hematovision.imaging.sources import ImageInput, from_bytes  # noqa: E402
from hematovision.serving.classifier import Classifier  # noqa: E402

CELLS = (WhiteCell(150, 140, 60, 3), WhiteCell(460, 300, 55, 1), WhiteCell(300, 380, 65, 4))


def _jpeg(rgb) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def big_photo() -> bytes:
    k = 6.25
    cells = tuple(WhiteCell(c.x * k, c.y * k, c.radius * k, c.lobes) for c in CELLS)
    return _jpeg(make_field(4000, 3000, cells, rbc_radius=45 * k, platelets=10, seed=1))


def _child_big(model: str | None, path: str) -> None:
    """Run in a fresh process: classify the 4000x3000 photograph file once and print the peak RSS (MiB)."""
    clf = Classifier.load(model)
    list(classify_fields(clf, [from_bytes("photo.jpg", Path(path).read_bytes())]))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    print(int(hwm.split()[1]) / 1024)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fields", type=int, default=60)
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--child-big", metavar="JPEG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_big:
        _child_big(args.model, args.child_big)
        return 0
    load_before = os.getloadavg()
    clf = Classifier.load(args.model)
    root = data_root(args.data)
    if (root / bccd.BCCD_DIR / "JPEGImages").is_dir():
        paths = sorted((root / bccd.BCCD_DIR / "JPEGImages").glob("*.jpg"))[: args.fields]
        items = [(p.name, p.read_bytes()) for p in paths]
        source = f"{len(items)} BCCD fields (640x480 JPEG)"
    else:
        items = [(f"gen{k}.jpg", _jpeg(make_field(cells=CELLS[: 1 + k % 3], seed=k))) for k in range(args.fields)]
        source = f"{len(items)} generated fields (640x480 JPEG)"
    list(classify_fields(clf, [from_bytes(n, d) for n, d in items[:4]]))  # warm-up
    t0 = time.perf_counter()
    res = list(classify_fields(clf, [from_bytes(n, d) for n, d in items]))
    streamed = (time.perf_counter() - t0) / len(items)
    n_cells = sum(len(r.cells) for r in res)
    one = []
    for n, d in items[:20]:
        t0 = time.perf_counter()
        list(classify_fields(clf, [from_bytes(n, d)]))
        one.append(time.perf_counter() - t0)
    det = []
    for _n, d in items[:20]:
        rgb = decode_image(d).rgb
        t0 = time.perf_counter()
        detect_white_cells(rgb)
        det.append(time.perf_counter() - t0)
    photo = big_photo()
    big = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = list(classify_fields(clf, [ImageInput("photo.jpg", lambda: photo)]))
        big.append(time.perf_counter() - t0)
    big_cells = len(r[0].cells)
    with tempfile.TemporaryDirectory() as tmp:  # the photograph is made here: the child only reads and classifies it
        (Path(tmp) / "photo.jpg").write_bytes(photo)
        child = subprocess.run(
            [sys.executable, __file__, "--child-big", str(Path(tmp) / "photo.jpg")]
            + (["--model", args.model] if args.model else []),
            capture_output=True,
            text=True,
            cwd=REPO,
        )
    rss = float(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / items[0][0]
        f.write_bytes(items[0][1])
        cli = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hematovision",
                    "classify",
                    str(f),
                    "--fields",
                    "--out",
                    str(Path(tmp) / "c.csv"),
                    "--quiet",
                ]
                + (["--model", args.model] if args.model else []),
                cwd=REPO,
                check=True,
                capture_output=True,
            )
            cli.append(time.perf_counter() - t0)
    load_after = os.getloadavg()
    print(
        f"Measured with `benchmarks/bench_fields.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, model `{clf.version}` ({clf.backend}); "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after.\n"
    )
    print("| measurement | value |\n|---|---:|")
    print(f"| {source}, streamed through `classify_fields` ({n_cells} cells): seconds per field | {streamed:.3f} |")
    one_med = statistics.median(one)
    print(f"| the same, one field at a time (median / max of {len(one)}) | {one_med:.3f} / {max(one):.3f} |")
    det_ms = statistics.median(det) * 1000
    print(f"| detector alone on a decoded 640x480 field (median of {len(det)}) | {det_ms:.1f} ms |")
    big_s = statistics.median(big)
    print(f"| 4000x3000 JPEG photograph, one at a time ({big_cells} cells; median of 3) | {big_s:.2f} s |")
    print(f"| peak resident memory of a fresh process reading and classifying it | {rss:.0f} MiB |")
    print(f"| `classify --fields` on one field, command to CSV, cold (median of 3) | {statistics.median(cli):.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
