"""Will `adapt` reach 90% with 20 labeled cells per class? Variants of the adaptation on simulated labs.

    nice -n 19 .venv/bin/python scripts/adapt_check.py --loso-work runs/loso [--seeds 0,1,2,3,4]
        [--proxy NAME ...] [--variant NAME ...] [--json out.json] [--write table.md]
    nice -n 19 .venv/bin/python scripts/adapt_check.py --wall [--variant NAME ...]

``--wall``: the wall time of adapting the shipped model to 20 labeled cells per class (PBC validation images
re-stained as ``--lab``, default ``lab_rapid_tight``, written to a temporary folder): ``python -m hematovision
adapt`` end to end (start, model load, adaptation, saving, LiteRT export, then the unfamiliar-cell refit) with the
default configuration; then, on the lab's held-out images (never labeled), the unfamiliar share and accuracy under
the parent and under the adapted version; then each ``--variant`` in process (``adapt_model``, LiteRT export
included, no refit).

Labs: the other source of leave-one-source-out (the ``stain_invariant`` LOSO runs' best weights in
``--loso-work``, as ``python -m hematovision loso`` leaves them) and held-out stain-suite families applied to
the PBC validation images of the shipped model (``--model``). Never a test split. See
``hematovision/training/adapt_check.py`` and docs/adaptation.md. Prints a Markdown table (mean ± s.d. over
draws of the labeled cells).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hematovision.config import TRAINING_CLASSES, data_root  # noqa: E402
from hematovision.data import datasets as ds  # noqa: E402
from hematovision.modeling import persistence  # noqa: E402
from hematovision.serving.classifier import Classifier  # noqa: E402
from hematovision.training import adapt_check as ac  # noqa: E402
from hematovision.training.adapt import adapt_model  # noqa: E402


def unfamiliar_on(model_dir: Path, rgb, labels) -> str:
    """The unfamiliar share (and accuracy) of a model's served path on images, in words."""
    clf = Classifier.load(model_dir)
    probs, feats = clf.proba_and_features(rgb)
    acc = float(np.mean([clf.classes_[k] == y for k, y in zip(probs.argmax(1), labels)]))
    if clf.trust is None:
        return f"not checked (no trust.npz); accuracy {acc:.1%}"
    share = float(clf.trust.unfamiliar(clf.trust.score(feats, probs)).mean())
    return f"{share:.1%} unfamiliar, accuracy {acc:.1%} ({clf.version})"


def wall(model: Path, images, per_class: int, chosen, family: str = "lab_rapid_tight") -> int:
    """Time adaptation to ``per_class`` shifted PBC validation images a class (see the module docstring)."""
    lab = ac.lab_split(images, "pbc", 100, per_class)
    picked = [i for c in TRAINING_CLASSES for i in ac.draw(lab.pool[c], per_class, np.random.default_rng(0))]
    shifted = ac.LabImages(lab, family)
    rgb = shifted(picked)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (item, x) in enumerate(zip(picked, rgb)):
            folder = Path(tmp) / "lab" / item.label
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{k}.png"), cv2.cvtColor(x, cv2.COLOR_RGB2BGR))
        t0 = time.time()
        cmd = [sys.executable, "-m", "hematovision", "adapt", str(Path(tmp) / "lab"), "--name", "wall",
               "--model", str(model), "--out", str(Path(tmp) / "wall"), "--quiet"]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        print(f"CLI adapt (default configuration, {family}), {len(picked)} images: {time.time() - t0:.1f} s wall, "
              f"rc {done.returncode}:\n{done.stdout.strip()}\n{done.stderr.strip()[-600:]}")
        held = shifted(lab.test)
        truth = [i.label for i in lab.test]
        print(f"the lab's {len(held)} held-out images: parent {unfamiliar_on(model, held, truth)}; adapted "
              f"{unfamiliar_on(Path(tmp) / 'wall', held, truth)}")
        y = [i.label for i in picked]
        for v in chosen:
            t0 = time.time()
            adapt_model(model, rgb, y, Path(tmp) / f"v{len(v.name)}-{time.time():.0f}", "wall-v", replace(v.cfg))
            print(f"{v.name}: {time.time() - t0:.1f} s wall in process (adapt_model, LiteRT export included)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models", help="the shipped model directory (its split manifest is used)")
    p.add_argument("--loso-work", help="folder with stain_invariant-without-kaggle/ and -without-pbc/ LOSO runs")
    p.add_argument("--data", help="data root (default: $HEMATOVISION_DATA or ../shared/data)")
    p.add_argument("--cache", default=".cache/adapt_check", help="activation cache")
    p.add_argument("--seeds", default="0,1,2,3,4", help="draws of the labeled cells")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--proxy", action="append", help="only these labs (substring of the name; repeatable)")
    p.add_argument("--variant", action="append", help="only these variants (exact name; repeatable)")
    p.add_argument("--json", help="write the scores here")
    p.add_argument("--write", help="also write the table to this Markdown file")
    p.add_argument("--wall", action="store_true", help="time the adaptation instead (see above)")
    p.add_argument("--lab", default="lab_rapid_tight", help="--wall: the stain-suite family the lab is shifted by")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = data_root(a.data)
    images = ds.read_manifest(Path(a.model) / persistence.MANIFEST_FILE, root)
    chosen = [v for v in ac.variants() if not a.variant or v.name in a.variant]
    if a.wall:
        return wall(Path(a.model), images, a.per_class, chosen if a.variant else [], a.lab)
    proxies = [x for x in ac.PROXIES if not a.proxy or any(s in x.name for s in a.proxy)]
    if not proxies or not chosen:
        print("no lab or no variant matches", file=sys.stderr)
        return 2
    networks = {}
    needed = {x.model for x in proxies}
    if "shipped" in needed:
        networks["shipped"] = ac.shipped_network(Path(a.model))
    for held in ("kaggle", "pbc"):
        if f"without_{held}" in needed:
            if not a.loso_work:
                print(f"--loso-work is needed for the {held} lab", file=sys.stderr)
                return 2
            networks[f"without_{held}"] = ac.loso_network(Path(a.loso_work) / f"stain_invariant-without-{held}")
    t0 = time.time()
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    scores = ac.run(proxies, networks, images, Path(a.cache), seeds, a.per_class, chosen)
    text = ac.table(scores)
    print(text)
    if a.json:
        Path(a.json).write_text(ac.to_json(scores, {"seeds": seeds, "per_class": a.per_class,
                                                    "seconds": round(time.time() - t0, 1)}))
    if a.write:
        Path(a.write).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
