"""What the unfamiliar-cell score costs at serving time.

    python benchmarks/bench_trust.py --before DIR_WITHOUT_TRUST --after DIR_WITH_TRUST [--images 2000] [--repeats 2]

1. The network alone: the same framed batch through a one-output flat-buffer (probabilities) and a
   two-output one (probabilities + pooled features), alternated, fastest of ``--repeats``.
2. The score alone: ``TrustModel.score`` on the features of a batch (k-NN over the bank).
3. End to end: ``hematovision.cli.main(['classify', ...])`` on ``--images`` Kaggle TEST images with each
   model directory, alternated (``before``, ``after``, ...), fastest of ``--repeats``.

On a shared machine the absolute figures move with the load; the before/after ratio of runs made
back to back is the figure to read.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def kaggle_test_files(n: int) -> list[Path]:
    from hematovision.config import data_root
    from hematovision.data.layout import IMAGE_SUFFIXES, KAGGLE_DIR

    files = sorted(p for p in (data_root() / KAGGLE_DIR / "TEST").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return (files * (n // max(1, len(files)) + 1))[:n]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--before", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    from hematovision.cli import main as cli
    from hematovision.imaging.decode import read_rgb
    from hematovision.imaging.framing import model_input
    from hematovision.modeling import persistence, unfamiliar
    from hematovision.serving.litert import LiteRTRuntime

    card = persistence.load_card(Path(a.after))
    files = kaggle_test_files(a.images)
    batch = np.stack([model_input(read_rgb(f), card.input_size, card.framing) for f in files[:256]]).astype(np.float32)
    one, two = (
        LiteRTRuntime(Path(a.before) / persistence.LITERT_FILE),
        LiteRTRuntime(Path(a.after) / persistence.LITERT_FILE),
    )
    print(f"flat-buffers: before has features output {one.has_features}, after {two.has_features}")
    t = {"one output": [], "two outputs": []}
    for _ in range(a.repeats):
        for name, rt in (("one output", one), ("two outputs", two)):
            t0 = time.perf_counter()
            for b in range(0, len(batch), 32):
                (rt.run_both if rt.has_features else rt)(batch[b : b + 32])
            t[name].append(time.perf_counter() - t0)
    for name, v in t.items():
        print(f"network, {name}: {len(batch) / min(v):.1f} img/s (256 images, fastest of {a.repeats})")
    tm = unfamiliar.load(Path(a.after))
    probs, feats = two.run_both(batch)
    t0 = time.perf_counter()
    for _ in range(5):
        for b in range(0, len(batch), 32):
            tm.score(feats[b : b + 32], probs[b : b + 32])
    per = (time.perf_counter() - t0) / 5 / len(batch) * 1000
    print(
        f"score: {per:.3f} ms per image (bank {len(tm.bank)} x {tm.bank.shape[1]}, outlier bank "
        f"{0 if tm.outlier_bank is None else len(tm.outlier_bank)}, k {tm.k}, batches of 32)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        folder.mkdir()
        for k, f in enumerate(files):
            os.symlink(f, folder / f"{k:05d}{f.suffix}")
        ends = {"before": [], "after": []}
        for _ in range(a.repeats):
            for name in ("before", "after"):
                t0 = time.perf_counter()
                cli(
                    [
                        "classify",
                        str(folder),
                        "--out",
                        str(Path(tmp) / f"{name}.csv"),
                        "--model",
                        getattr(a, name),
                        "--quiet",
                        "--summary",
                        str(Path(tmp) / f"{name}.json"),
                    ]
                )
                ends[name].append(time.perf_counter() - t0)
        for name, v in ends.items():
            print(
                f"classify {len(files)} Kaggle TEST images, {name}: {len(files) / min(v):.1f} img/s (runs: "
                + ", ".join(f"{x:.1f} s" for x in v)
                + ")"
            )
        print(f"after / before: {min(ends['before']) / min(ends['after']):.3f} of the throughput")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
