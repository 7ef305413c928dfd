"""Inference benchmark: files on disk -> CSV through the CLI code path, against a per-image Keras baseline.

    python benchmarks/bench_inference.py [--model DIR] [--images 1 100 2000] [--baseline 100] [--no-dashboard]
                                         [--write docs/performance.md]

Images: real ones from the data root when present (Kaggle TEST and PBC JPEGs, copied
to a temporary folder, repeated if more are asked for than exist), else synthetic
320x240 JPEGs. Every measurement runs in its own fresh Python process, so model
load, imports and peak resident memory are those of one run:

- throughput: ``hematovision.cli.main(['classify', DIR, '--out', CSV, '--quiet'])`` for
  each size; wall time of that call (model load included, interpreter start-up excluded);
- peak memory: ``ru_maxrss`` of each of those processes (``getrusage(RUSAGE_SELF)`` read
  inside the child at its end, which is what ``RUSAGE_CHILDREN`` reports for it alone);
- per-image latency: one image at a time through ``Classifier.classify`` (read, decode,
  resize, forward), median of many;
- CLI cold start: ``python -m hematovision classify one.jpg --out x.csv`` wall time,
  process start to exit (interpreter, imports, model load, first prediction, CSV);
- dashboard cold start: ``streamlit run Home.py`` until ``/_stcore/health`` answers 200;
- baseline: the Keras model's ``model.predict`` once per image (read, decode, resize, predict).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# ------------------------------------------------------------------ images


def prepare_images(dest: Path, n: int, data: str | None = None) -> str:
    """Write ``n`` images to ``dest``; returns a description of where they came from."""
    from hematovision.config import data_root
    from hematovision.data.layout import IMAGE_SUFFIXES, KAGGLE_DIR, PBC_DIR

    dest.mkdir(parents=True, exist_ok=True)
    root = data_root(data)
    files: list[Path] = []
    if (root / KAGGLE_DIR / "TEST").is_dir():
        files += sorted(p for p in (root / KAGGLE_DIR / "TEST").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if (root / PBC_DIR).is_dir():
        pbc = sorted(p for p in (root / PBC_DIR).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += pbc[:: max(1, len(pbc) // max(n, 1))][:max(n // 2, 1)]  # spread over the classes
    if files:
        # interleave the two sources so any prefix has both
        kag = [f for f in files if "blood-cells" in f.parts]
        pb = [f for f in files if "blood-cells" not in f.parts]
        mixed = [x for pair in zip(kag, pb) for x in pair] + kag[len(pb):] + pb[len(kag):]
        for k in range(n):
            src = mixed[k % len(mixed)]
            shutil.copyfile(src, dest / f"{k:05d}{src.suffix.lower()}")
        n_kag, n_pbc = sum(1 for f in mixed[:n] if f in kag), sum(1 for f in mixed[:n] if f in pb)
        return (f"real images from {root} (Kaggle TEST {n_kag}, PBC {n_pbc} of the first {min(n, len(mixed))}; "
                f"repeated past {len(mixed)})")
    from PIL import Image

    from hematovision.serving.litert import generated_images

    gen = generated_images(64, seed=1)
    for k in range(n):
        Image.fromarray(gen[k % 64]).resize((320, 240)).save(dest / f"{k:05d}.jpg", quality=90)
    return "synthetic 320x240 JPEGs (no data root found)"


def subset(src: Path, n: int, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir())[:n]:
        try:
            os.link(f, dest / f.name)
        except OSError:
            shutil.copyfile(f, dest / f.name)
    return dest


# ------------------------------------------------------------------ workers (run in a child process)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker_classify(model: str, folder: str, out: str, backend: str) -> dict:
    from hematovision import cli
    from hematovision.serving import classifier as inference

    if backend != "auto":  # force a backend through the same CLI code path
        orig = inference.Classifier.load.__func__
        inference.Classifier.load = classmethod(lambda cls, *a, **k: orig(cls, *a, backend=backend, **k))
    n = len(os.listdir(folder))
    t0 = time.perf_counter()
    rc = cli.main(["classify", folder, "--out", out, "--quiet", "--model", model])
    dt = time.perf_counter() - t0
    used = inference.Classifier.load(model).backend if backend == "auto" else backend
    return {
        "rc": rc,
        "n": n,
        "seconds": dt,
        "rss_mib": _rss_mib(),
        "backend": used,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def worker_latency(model: str, folder: str, repeats: int) -> dict:
    from hematovision.imaging.sources import iter_paths
    from hematovision.serving.classifier import Classifier

    clf = Classifier.load(model)
    files = sorted(Path(folder).iterdir())
    times = []
    for k in range(repeats + 3):
        item = next(iter_paths([files[k % len(files)]]))
        t0 = time.perf_counter()
        list(clf.classify([item]))
        if k >= 3:  # warm-up excluded
            times.append(time.perf_counter() - t0)
    return {
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * sorted(times)[int(0.9 * (len(times) - 1))],
        "backend": clf.backend,
    }


def worker_baseline(model: str, folder: str) -> dict:
    import numpy as np

    from hematovision.imaging.decode import decode_image
    from hematovision.imaging.framing import model_input
    from hematovision.modeling import persistence

    card = persistence.load_card(Path(model))
    net = persistence.load_keras_model(Path(model), card)
    files = sorted(Path(folder).iterdir())
    net.predict(np.zeros((1, card.input_size, card.input_size, 3), np.float32), verbose=0)  # warm-up
    t0 = time.perf_counter()
    for f in files:
        x = model_input(decode_image(f.read_bytes()).rgb, card.input_size, card.framing)
        net.predict(x[None].astype(np.float32), verbose=0)
    dt = time.perf_counter() - t0
    return {"n": len(files), "seconds": dt, "rss_mib": _rss_mib()}


def worker_batchcmp(model: str, tmp: str) -> dict:
    """Network-only images/s of the exported batch-1 flat-buffer vs a dynamic-batch one (why batch 1 is exported)."""
    import numpy as np

    from hematovision.modeling import persistence
    from hematovision.serving import litert

    card = persistence.load_card(Path(model))
    net = persistence.load_keras_model(Path(model), card)
    s = int(card.input_size)
    x = np.random.default_rng(0).uniform(0, 255, (64, s, s, 3)).astype(np.float32)
    out = {}
    for batch, calls in ((1, (1,)), (None, (1, 8, 32))):
        path = Path(tmp) / f"batch-{batch}.tflite"
        path.write_bytes(litert.convert(net, s, batch))
        rt = litert.LiteRTRuntime(path)
        for bs in calls:
            best = 0.0
            for _ in range(3):
                rt(x[:bs])
                t0 = time.perf_counter()
                for k in range(0, len(x), bs):
                    rt(x[k:k + bs])
                best = max(best, len(x) / (time.perf_counter() - t0))
            out[f"{'batch-1' if batch else 'dynamic-batch'} flat-buffer, {bs} image(s) per invoke"] = best
    return out


def _child(*args: str, env_extra: dict | None = None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env_extra or {})}
    r = subprocess.run([sys.executable, __file__, "--worker", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ parent


def cli_cold_start(model: str, image: Path, tmp: Path, repeats: int = 3) -> list[float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = []
    for k in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "hematovision",
                "classify",
                str(image),
                "--out",
                str(tmp / f"cold{k}.csv"),
                "--quiet",
                "--model",
                model,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        out.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
    return out


def dashboard_cold_start(model: str, timeout: float = 90.0) -> float | None:
    """Seconds from launching ``streamlit run Home.py`` until its health check answers (``None`` if it never does)."""
    from hematovision.app.devserver import dashboard

    if shutil.which("streamlit", path=str(Path(sys.executable).parent)) is None:
        return None
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "HEMATOVISION_MODEL": model}
    t0 = time.perf_counter()
    try:
        with dashboard(env, timeout=timeout, poll=0.1):
            return time.perf_counter() - t0
    except RuntimeError:
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: the shipped models/)")
    p.add_argument("--data", help="data root for real images (default: $HEMATOVISION_DATA or ../shared/data)")
    p.add_argument("--images", type=int, nargs="+", default=[1, 100, 2000], help="batch sizes to time end to end")
    p.add_argument("--baseline", type=int, default=100, help="images for the per-image model.predict baseline")
    p.add_argument(
        "--keras-batched", action="store_true", help="also time the largest size with the Keras backend (batched)"
    )
    p.add_argument("--latency-repeats", type=int, default=30)
    p.add_argument("--no-dashboard", action="store_true")
    p.add_argument(
        "--compare-parallel",
        action="store_true",
        help="also time the largest size with one 2-thread interpreter instead of two 1-thread ones",
    )
    p.add_argument(
        "--compare-batch",
        action="store_true",
        help="also time a dynamic-batch flat-buffer against the exported batch-1 one (network only)",
    )
    p.add_argument("--write", help="write the results as Markdown to this file (e.g. docs/performance.md)")
    p.add_argument(
        "--from-json", help="only re-render saved results (the JSON each run leaves in the temp dir) with --write"
    )
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        kind, *rest = a.worker
        fn = {
            "classify": worker_classify,
            "latency": lambda m, f, r: worker_latency(m, f, int(r)),
            "baseline": worker_baseline,
            "batchcmp": worker_batchcmp,
        }[kind]
        print(json.dumps(fn(*rest)))
        return 0

    if a.from_json:
        res = json.loads(Path(a.from_json).read_text())
        print(table(res))
        if a.write:
            Path(a.write).write_text(markdown(res))
        return 0
    from hematovision.config import model_dir
    from hematovision.modeling.persistence import load_card, machine_description

    model = str(model_dir(a.model))
    card = load_card(Path(model))
    sizes = sorted(set(a.images))
    res: dict = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_description(),
        "model": model,
        "version": card.version,
        "input_size": card.input_size,
        "python": sys.version.split()[0],
        "load_avg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="hv-bench-") as tmpd:
        tmp = Path(tmpd)
        res["images"] = prepare_images(tmp / "all", max(sizes + [a.baseline]), a.data)
        print(f"images: {res['images']}", file=sys.stderr)
        bdir = str(subset(tmp / "all", a.baseline, tmp / f"b{a.baseline}"))
        # the baseline is timed before and right after the throughput runs, and the faster of the two is
        # used for the ratios (the conservative choice when other jobs load the machine unevenly)
        b0 = _child("baseline", model, bdir)
        print(f"baseline (before) {b0['n'] / b0['seconds']:.1f} img/s", file=sys.stderr)
        rows = []
        for n in sizes:
            r = _child("classify", model, str(subset(tmp / "all", n, tmp / f"n{n}")), str(tmp / f"out{n}.csv"), "auto")
            r["images_per_s"] = r["n"] / r["seconds"]
            rows.append(r)
            print(
                f"classify {n:5d} [{r['backend']}]: {r['seconds']:.2f} s, {r['images_per_s']:.1f} img/s, peak RSS "
                f"{r['rss_mib']:.0f} MiB",
                file=sys.stderr,
            )
        res["classify"] = rows
        if a.keras_batched:
            n = sizes[-1]
            r = _child("classify", model, str(tmp / f"n{n}"), str(tmp / f"outk{n}.csv"), "keras")
            r["images_per_s"] = r["n"] / r["seconds"]
            res["classify_keras_batched"] = r
            print(
                f"classify {n:5d} [keras batched]: {r['seconds']:.2f} s, {r['images_per_s']:.1f} img/s, peak RSS "
                f"{r['rss_mib']:.0f} MiB",
                file=sys.stderr,
            )
        if a.compare_parallel:
            n = sizes[-1]
            r = _child(
                "classify",
                model,
                str(tmp / f"n{n}"),
                str(tmp / f"outp{n}.csv"),
                "auto",
                env_extra={"HEMATOVISION_LITERT_PARALLEL": "1"},
            )
            r["images_per_s"] = r["n"] / r["seconds"]
            res["classify_single_interpreter"] = r
            print(
                f"classify {n:5d} [one interpreter, 2 threads]: {r['seconds']:.2f} s, {r['images_per_s']:.1f} img/s",
                file=sys.stderr,
            )
        res["latency"] = _child("latency", model, str(tmp / "all"), str(a.latency_repeats))
        print(f"latency: {res['latency']}", file=sys.stderr)
        b1 = _child("baseline", model, bdir)
        base = min((b0, b1), key=lambda b: b["seconds"])
        base["images_per_s"] = base["n"] / base["seconds"]
        base["runs_images_per_s"] = [b0["n"] / b0["seconds"], b1["n"] / b1["seconds"]]
        res["baseline"] = base
        print(
            f"baseline model.predict per image: {base['images_per_s']:.1f} img/s ({1000 / base['images_per_s']:.0f} "
            f"ms/img)",
            file=sys.stderr,
        )
        one = sorted((tmp / "all").iterdir())[0]
        res["cli_cold_start_s"] = cli_cold_start(model, one, tmp)
        print(f"CLI cold start: {res['cli_cold_start_s']}", file=sys.stderr)
        res["dashboard_cold_start_s"] = None if a.no_dashboard else dashboard_cold_start(model)
        if a.compare_batch:
            res["batch_compare"] = _child("batchcmp", model, str(tmp))
            print(f"batch compare: {res['batch_compare']}", file=sys.stderr)
        res["children_maxrss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    res["load_avg_after"] = os.getloadavg()
    print(table(res))
    if a.write:
        Path(a.write).write_text(markdown(res))
        print(f"written {a.write}", file=sys.stderr)
    Path(tempfile.gettempdir(), "hv-bench-last.json").write_text(json.dumps(res, indent=1))
    return 0


def table(res: dict) -> str:
    base = res["baseline"]["images_per_s"]
    lines = [
        "| measurement | backend | images | seconds | images/s | × baseline | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["classify"]:
        lines.append(
            f"| CLI classify, files → CSV | {r['backend']} | {r['n']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} "
            f"| {r['images_per_s'] / base:.1f} | {r['rss_mib']:.0f} |"
        )
    if "classify_single_interpreter" in res:
        r = res["classify_single_interpreter"]
        lines.append(
            f"| CLI classify, files → CSV | litert, one interpreter × 2 XNNPACK threads (before) | {r['n']} | "
            f"{r['seconds']:.2f} | {r['images_per_s']:.1f} | {r['images_per_s'] / base:.1f} | {r['rss_mib']:.0f} |"
        )
    if "classify_keras_batched" in res:
        r = res["classify_keras_batched"]
        lines.append(
            f"| CLI classify, files → CSV | keras (batched) | {r['n']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} "
            f"| {r['images_per_s'] / base:.1f} | {r['rss_mib']:.0f} |"
        )
    b = res["baseline"]
    runs = b.get("runs_images_per_s")
    lines.append(
        f"| baseline: `model.predict` per "
        f"image{' (faster of runs before/after: ' + ' / '.join(f'{v:.1f}' for v in runs) + ' img/s)' if runs else ''} "
        f"| keras | {b['n']} | {b['seconds']:.2f} | {base:.1f} | 1.0 | {b['rss_mib']:.0f} |"
    )
    lat = res["latency"]
    cold = res["cli_cold_start_s"]
    lines += [
        "",
        "| latency / start-up | value |",
        "|---|---:|",
        f"| per-image latency, one image at a time ({lat['backend']}), median / p90 | {lat['median_ms']:.1f} ms / "
        f"{lat['p90_ms']:.1f} ms |",
        f"| baseline per-image latency (`model.predict`) | {1000 / base:.1f} ms |",
        f"| CLI cold start to first prediction (`python -m hematovision classify one.jpg`), median of {len(cold)} | "
        f"{statistics.median(cold):.2f} s (runs: {', '.join(f'{c:.2f}' for c in cold)}) |",
    ]
    d = res.get("dashboard_cold_start_s")
    lines.append(
        f"| dashboard cold start (`streamlit run Home.py` until /_stcore/health is 200) | "
        f"{'not measured' if d is None else f'{d:.2f} s'} |"
    )
    if res.get("batch_compare"):
        lines += ["", "| LiteRT network only (random input, best of 3 × 64 images) | images/s |", "|---|---:|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in res["batch_compare"].items()]
    return "\n".join(lines)


def markdown(res: dict) -> str:
    big = res["classify"][-1]
    base = res["baseline"]["images_per_s"]
    cold = statistics.median(res["cli_cold_start_s"])
    rss = [r["rss_mib"] for r in res["classify"]]
    load_before = ", ".join(f"{v:.1f}" for v in res["load_avg_before"])
    load_after = ", ".join(f"{v:.1f}" for v in res["load_avg_after"])
    litert_note = (" (model.tflite via ai_edge_litert, XNNPACK: two single-threaded interpreters, "
                   "each running half of every batch)")
    served = litert_note if big["backend"] == "litert" else ""
    n_big, ratio = big["n"], big["images_per_s"] / base
    throughput_met = "met" if ratio >= 15 else "NOT met"
    rss_mib = ", ".join(f"{r:.0f}" for r in rss)
    rss_images = ", ".join(str(r["n"]) for r in res["classify"])
    return f"""# Inference performance

Measured with `benchmarks/bench_inference.py` on {res.get("when", "")}.

- Machine: {res["machine"]}; load average {load_before} before and {load_after} after (other jobs were sharing the CPU).
- Model: `{res["version"]}` ({res["input_size"]} px), served by `{big["backend"]}`{served}.
- Images: {res["images"]}.
- Python {res["python"]}.

{table(res)}

## Against the issue's bars

- {n_big}-image throughput vs the per-image `model.predict` baseline: **{ratio:.1f}×** (bar: ≥ 15×) — {throughput_met}.
- CLI cold start to first prediction: **{cold:.2f} s** (bar: ≤ 1.5 s) — {"met" if cold <= 1.5 else "NOT met"}.
- Same predictions as Keras: the LiteRT flat-buffer is checked against the Keras model at export
  (`max_abs_diff` in `models/model_card.json` → `litert`; bar 1e-4) and in `tests/test_litert.py`.
- Peak resident memory per run: {rss_mib} MiB for {rss_images} images — bounded
  (images are decoded a batch at a time; it does not grow with the number of images).

Why a batch-1 flat-buffer: the exported `model.tflite` has a fixed input of `[1, S, S, 3]` and
`Classifier` invokes it once per image of each 32-image decode batch. During development (224 px model), at a quieter
moment on this machine, the network alone ran ~280-295 images/s that way against ~225-235 images/s for a
dynamic-batch flat-buffer invoked with 32 images at a time (activations of a large batch fall out of
cache); under heavy load from other jobs the difference disappears into the noise (see the network-only
table above when run with `--compare-batch`). A fixed shape also never pays the interpreter's
re-planning when the batch size changes (~0.15 s each time, e.g. the last, short batch of a run).

Two single-threaded interpreters or one with two threads: `Classifier` serves with two independent
interpreters, each running half of every batch on one thread (probabilities bit-identical, `tests/test_litert.py`),
because one interpreter's 2 XNNPACK threads spin-wait for each other while the two image-decoding threads
need the same 2 cores. The row "one interpreter × 2 XNNPACK threads" is that alternative, timed in the same run
(`--compare-parallel`; `HEMATOVISION_LITERT_PARALLEL=1` selects it). Measured so far: with the 224 px model,
217 vs 182 images/s (quiet machine) and 115–144 vs 103–105 images/s (machine shared with a test run); with the
192 px model on a quiet machine the two are within 5% of each other, either way round (264 vs 267, 260 vs 272).
Two interpreters are kept as the default for the loaded case.

The dashboard figure is the Streamlit server becoming ready; the model itself is loaded on the first
page view (the same `Classifier.load` as the CLI, timed in the cold-start figure).

Notes: end-to-end times are the wall time of `hematovision.cli.main(["classify", DIR, "--out", CSV, "--quiet"])`
in a fresh process (model load included; Python start-up excluded — that is in the cold-start figure).
Peak memory is each child's `ru_maxrss`. The baseline reads, decodes and resizes each image exactly as the
CLI does, then calls `model.predict(x[None])` on the Keras model once per image. The figures vary with
the load from other processes on this shared 2-core machine; rerun to compare.

## Rerun

```
. .venv/bin/activate
python -m hematovision export-litert            # once per model: writes models/model.tflite and records it in the card
python benchmarks/bench_inference.py --compare-parallel --keras-batched --compare-batch --write docs/performance.md
python benchmarks/bench_inference.py --model DIR --images 1 100 2000 --baseline 100 --keras-batched --no-dashboard
HEMATOVISION_LITERT_THREADS=1 python benchmarks/bench_inference.py   # XNNPACK threads (default 2)
```
"""


if __name__ == "__main__":
    sys.exit(main())
