"""``classify --engine ray`` against the default engine: throughput, scaling with the actor pool, and the check
that both give the same rows (same files, same class on every row, probabilities within 1e-4).

    python benchmarks/bench_ray.py [--n 2000] [--runs default ray:1:2 ray:2:4] [--work /tmp/hv_bench_ray]

Images: the first ``n`` Kaggle TEST images (sorted paths) from the data root, as symbolic links in
``WORK/n<N>/copy<K>/`` (repeated copies when ``n`` exceeds the 2,487 there; nothing is written into the
repository). Each run is its own Python process calling ``hematovision.cli.main(['classify', ...])``:

- ``default``: the default engine (threads + two LiteRT interpreters);
- ``ray:W:C``: ``--engine ray --workers W`` on a local Ray cluster of ``C`` logical CPUs (``--num-cpus C``).
  The cluster is started first and timed on its own (``start_s``), then the command runs on it (``run_s``,
  model shipping, actor start and every image included).

Printed per run: images, seconds, images/s over ``run_s``, the load average before and after (the machine is
shared), and for Ray runs the comparison with the default run's CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def prepare(work: Path, n: int) -> Path:
    """``n`` Kaggle TEST images as links under ``work/n<N>`` (made once)."""
    from hematovision.config import data_root
    from hematovision.data.layout import IMAGE_SUFFIXES, KAGGLE_DIR

    dest = work / f"n{n}"
    if dest.is_dir() and sum(1 for _ in dest.rglob("*") if _.is_symlink()) == n:
        return dest
    test = data_root() / KAGGLE_DIR / "TEST"
    files = sorted(p for p in test.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        sys.exit(f"no Kaggle TEST images under {test}")
    for k in range(n):
        copy = dest / f"copy{k // len(files):03d}"
        copy.mkdir(parents=True, exist_ok=True)
        src = files[k % len(files)]
        link = copy / f"{src.parent.name}_{src.name}"
        if not link.is_symlink():
            link.symlink_to(src)
    return dest


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def child(spec: str, folder: str, out: str) -> dict:
    """One run in this process (``--child``)."""
    from hematovision.cli import main

    args = ["classify", folder, "--out", out, "--quiet"]
    rec: dict = {"run": spec, "load_before": load()}
    if spec.startswith("ray"):
        from hematovision.serving import ray_engine

        _, workers, cpus = spec.split(":")
        t = time.perf_counter()
        ray_engine.connect(ray_engine.RayOptions(num_cpus=int(cpus)))
        rec["start_s"] = round(time.perf_counter() - t, 2)
        args += ["--engine", "ray", "--workers", workers]
    t = time.perf_counter()
    if main(args) != 0:
        raise SystemExit(f"{spec}: classify failed")
    rec["run_s"] = round(time.perf_counter() - t, 2)
    rec["load_after"] = load()
    return rec


def compare(ray_csv: Path, default_csv: Path) -> dict:
    def rows(p):
        with open(p, newline="") as fh:
            return list(csv.DictReader(fh))

    a, b = rows(ray_csv), rows(default_csv)
    probs = [k for k in b[0] if k.startswith("p_")] if b else []
    diff = max(
        (abs(float(x[k]) - float(y[k])) for x, y in zip(a, b) for k in probs if x[k] and y[k]), default=0.0
    )
    return {
        "same_files": [r["file"] for r in a] == [r["file"] for r in b],
        "same_classes": [r["predicted_class"] for r in a] == [r["predicted_class"] for r in b],
        "max_abs_prob_diff": diff,
        "identical_csv": ray_csv.read_bytes() == default_csv.read_bytes(),
        "errors": sum(1 for r in a if r["error"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="images (Kaggle TEST, repeated copies beyond 2,487)")
    ap.add_argument("--runs", nargs="+", default=["default", "ray:1:2", "ray:2:4"])
    ap.add_argument("--work", default="/tmp/hv_bench_ray", help="where the links and CSVs go (never the repo)")
    ap.add_argument("--child", nargs=3, metavar=("SPEC", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(*a.child)), flush=True)
        return
    work = Path(a.work)
    folder = prepare(work, a.n)
    print(f"{a.n} images under {folder}; {os.cpu_count()} CPUs; load {load()}", flush=True)
    default_csv = work / f"n{a.n}-default.csv"
    for spec in a.runs:
        out = work / f"n{a.n}-{spec.replace(':', '_')}.csv"
        r = subprocess.run(
            [sys.executable, __file__, "--child", spec, str(folder), str(out)],
            cwd=REPO, capture_output=True, text=True,
        )
        line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
        if r.returncode != 0 or line is None:
            print(f"{spec}: failed\n{r.stderr[-2000:]}", flush=True)
            continue
        rec = json.loads(line[7:])
        rec["images"] = a.n
        rec["images_per_s"] = round(a.n / rec["run_s"], 1)
        if spec.startswith("ray") and default_csv.is_file():
            rec.update(compare(out, default_csv))
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
