"""Measure and choose the unfamiliar-cell score and the batch rule on a model: features of image groups, cached.

    python scripts/trust_check.py extract [--model models] [--cache .cache/trust-dev]
    python scripts/trust_check.py measure [--model models] [--cache .cache/trust-dev] [--dims 256]

``extract`` computes (probabilities, pooled features) for: a training bank, every validation image of the
model's split manifest, BCCD red-cell / platelet / white-cell / background crops, and -- from the second half
of the validation images (by content hash) -- blurred, cut and stain-shifted copies (``shifts.SUITE``
families). The test sets (Kaggle TEST, every 4th; PBC test) and stain-shifted test images are extracted too,
for reporting only.

``measure`` fits each score variant on the bank and the *first* half of validation (threshold: at most 5% of
it unfamiliar) and the even-numbered BCCD fields' crops (outlier bank), and reports, per variant, the
unfamiliar share on the *second* half of validation (in-domain), the odd BCCD fields' crops and the
validation-derived blurred / cut / stain-shifted images: what the choice is made on. Then, for the batch
rule, the share of random batches called shifted, per minimum share. Test-set figures are printed apart,
after the choice, and never enter it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hematovision.config import data_root  # noqa: E402
from hematovision.data import datasets as ds  # noqa: E402
from hematovision.evaluation import shifts  # noqa: E402
from hematovision.imaging.decode import read_rgb  # noqa: E402
from hematovision.modeling import persistence, unfamiliar  # noqa: E402
from hematovision.serving.classifier import Classifier  # noqa: E402
from hematovision.stats.domain_shift import domain_shift  # noqa: E402
from hematovision.trust import outliers  # noqa: E402
from hematovision.trust.fit import auroc, bank_images, validation_images  # noqa: E402

#: Images per group (the machine is shared: smaller than fit-trust's bank).
SIZES = {"bank": 2000, "kaggle_test": 600, "pbc_test": 400, "shift": 200}
FAMILIES = ("restain_rapid", "cast_cyan", "lab_rapid_tight", "lab_cyan_field", "greyscale", "hue_90")
IN_DOMAIN = ("val_hold", "bccd_wbc")
TEST = ("kaggle_test", "pbc_test")


def _second_half(item: ds.LabeledImage) -> bool:
    """Validation images held out of the threshold (by the content hash's last hex digit, or the path's)."""
    key = item.sha256 or item.relpath
    return int(key[-1], 16) % 2 == 1 if key[-1] in "0123456789abcdef" else hash(key) % 2 == 1


def groups(model_dir: Path, root: Path) -> dict:
    """name -> callable returning a list of RGB arrays (or (array, tag) pairs), loaded lazily."""
    manifest = ds.read_manifest(model_dir / persistence.MANIFEST_FILE, root)
    rng = np.random.default_rng(1)

    def pick(items, n):
        return [items[i] for i in sorted(rng.choice(len(items), min(n, len(items)), replace=False))]

    val = validation_images(manifest)
    hold = [i for i in val if _second_half(i)]
    bank = bank_images(manifest, SIZES["bank"])
    kt = pick(ds.test_set(manifest, "kaggle_test"), SIZES["kaggle_test"])
    pt = pick(ds.test_set(manifest, "pbc_test"), SIZES["pbc_test"])
    few = SIZES["shift"] // 2
    hold_kaggle = pick([i for i in hold if i.source == "kaggle"], 2 * few)
    hold_pbc = pick([i for i in hold if i.source == "pbc"], 3 * few)
    mixed = hold_pbc[:few] + hold_kaggle[:few]
    out = {
        "val": lambda: [(read_rgb(i.path), "hold" if _second_half(i) else "fit") for i in val],
        "train_bank": lambda: [read_rgb(i.path) for i in bank],
    }
    for kind in ("RBC", "Platelets", "WBC"):
        out[f"bccd_{kind.lower()}"] = lambda kind=kind: [
            (c.rgb, c.field) for c in outliers.bccd_crops(root, kinds=(kind,), per_image=1)
        ]
    out["background"] = lambda: [(c.rgb, c.field) for c in outliers.background_crops(root)]
    out["blurred"] = lambda: [outliers.heavy_blur(read_rgb(i.path)) for i in hold_pbc[few:2 * few] + hold_kaggle[few:]]
    out["cut"] = lambda: [
        outliers.cut_cell(read_rgb(i.path), k) for k, i in enumerate(hold_pbc[2 * few:] + hold_kaggle[:few])
    ]
    fam = {f.name: f for f in shifts.SUITE}
    for name in FAMILIES:
        f = fam[name]
        src = hold_pbc[: 2 * few] if f.geometry else mixed
        out[f"shift_{name}"] = lambda f=f, src=src: [f.apply(read_rgb(i.path), k) for k, i in enumerate(src)]
    out["kaggle_test"] = lambda: [read_rgb(i.path) for i in kt]
    out["pbc_test"] = lambda: [read_rgb(i.path) for i in pt]
    for name in FAMILIES:
        f = fam[name]
        src = pt[: 2 * few] if f.geometry else pt[:few] + kt[:few]
        out[f"test_shift_{name}"] = lambda f=f, src=src: [f.apply(read_rgb(i.path), k) for k, i in enumerate(src)]
    return out


def extract(args) -> None:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    clf = Classifier.load(args.model, backend=args.backend)
    clf.trust = None
    print("backend", clf.backend, flush=True)
    for name, load in groups(Path(args.model), data_root(args.data)).items():
        dest = cache / f"{name}.npz"
        if dest.is_file():
            continue
        t0 = time.time()
        imgs = load()
        tags = [x[1] if isinstance(x, tuple) else "" for x in imgs]
        imgs = [x[0] if isinstance(x, tuple) else x for x in imgs]
        t1 = time.time()
        probs, feats = clf.proba_and_features(imgs)
        np.savez(dest, probs=probs.astype(np.float32), feats=feats.astype(np.float32), tags=np.array(tags))
        print(f"{name}: {len(imgs)} images, load {t1 - t0:.0f} s, forward {time.time() - t1:.0f} s", flush=True)


def _load(cache: Path, name: str):
    z = np.load(cache / f"{name}.npz")
    return z["probs"].astype(np.float64), z["feats"], z["tags"]


def _bccd_split(probs, feats, tags):
    """(fit part, measure part) of a BCCD group by field parity."""
    fit = np.array([outliers.bccd_half(t) == "fit" for t in tags])
    return (probs[fit], feats[fit]), (probs[~fit], feats[~fit])


def alarm_rate(flags: np.ndarray, expected: float, size: int, min_share: float, draws: int = 1000) -> float:
    rng = np.random.default_rng(0)
    if len(flags) < size:
        return float("nan")
    return float(np.mean([
        domain_shift(flags[rng.choice(len(flags), size, replace=False)], expected, min_share=min_share).detected
        for _ in range(draws)
    ]))


def measure(args) -> None:
    cache = Path(args.cache)
    bank_p, bank_f, _ = _load(cache, "train_bank")
    vp, vf, vt = _load(cache, "val")
    fit_mask = vt == "fit"
    val_p, val_f = vp[fit_mask], vf[fit_mask]
    meas = {"val_hold": (vp[~fit_mask], vf[~fit_mask])}
    fit_out = []
    for name in ("bccd_rbc", "bccd_platelets", "background"):
        a, b = _bccd_split(*_load(cache, name))
        fit_out.append(a[1])
        meas[name] = b
    meas["bccd_wbc"] = _bccd_split(*_load(cache, "bccd_wbc"))[1]
    for name in ["blurred", "cut"] + [f"shift_{f}" for f in FAMILIES]:
        p, f, _ = _load(cache, name)
        meas[name] = (p, f)
    out_f = np.concatenate(fit_out)
    variants = {
        "confidence only": dict(weights={"uncertainty": 1.0}),
        "knn (k 10)": dict(weights={"knn": 1.0}),
        "knn k 3": dict(weights={"knn": 1.0}, k=3),
        "knn k 20": dict(weights={"knn": 1.0}, k=20),
        "knn k 50": dict(weights={"knn": 1.0}, k=50),
        "knn + 0.5 outlier (shipped before)": dict(weights={"knn": 1.0, "outlier": 0.5}, outliers=True),
        "knn k 20 + 0.5 outlier": dict(weights={"knn": 1.0, "outlier": 0.5}, outliers=True, k=20),
        "knn k 50 + 0.5 outlier": dict(weights={"knn": 1.0, "outlier": 0.5}, outliers=True, k=50),
        "knn + 0.5 conf": dict(weights={"knn": 1.0, "uncertainty": 0.5}),
        "knn + 0.5 conf + 0.5 outlier": dict(weights={"knn": 1.0, "uncertainty": 0.5, "outlier": 0.5}, outliers=True),
        "knn + 1.0 conf + 0.5 outlier": dict(weights={"knn": 1.0, "uncertainty": 1.0, "outlier": 0.5}, outliers=True),
        "knn k 3 + 0.5 conf + 0.5 outlier": dict(
            weights={"knn": 1.0, "uncertainty": 0.5, "outlier": 0.5}, outliers=True, k=3
        ),
    }
    cols = list(meas)
    print("unfamiliar share (AUROC against the held-out validation half), chosen on these validation-derived groups")
    print("| variant | val fit | " + " | ".join(cols) + " | mean, not white cells | mean, stain shifts |")
    print("|---" * (len(cols) + 4) + "|")
    fitted = {}
    for vname, v in variants.items():
        tm = unfamiliar.fit(
            bank_f, val_f, val_p, k=v.get("k", 10), outlier_features=out_f if v.get("outliers") else None,
            weights=v["weights"], dims=args.dims,
        )
        fitted[vname] = tm
        hold_s = tm.score(*meas["val_hold"][::-1])
        cells, shares = [], {}
        for name in cols:
            p, f = meas[name]
            sc = tm.score(f, p)
            shares[name] = share = tm.unfamiliar(sc).mean()
            au = "" if name in IN_DOMAIN else f" / {auroc(hold_s, sc):.3f}"
            cells.append(f"{share:.1%}{au}")
        # the criterion: mean unfamiliar share over what is not a white cell, and over the stain shifts
        other = np.mean([v for k, v in shares.items() if k not in IN_DOMAIN and not k.startswith("shift_")])
        stain = np.mean([v for k, v in shares.items() if k.startswith("shift_")])
        print(f"| {vname} | {tm.expected_share:.1%} | " + " | ".join(cells) + f" | {other:.1%} | {stain:.1%} |",
              flush=True)
    chosen = args.variant or "knn + 0.5 outlier (shipped before)"
    tm = fitted[chosen]
    print(f"\nbatch rule on '{chosen}': share of 1000 random batches called shifted, per minimum share")
    for min_share in args.floors:
        print(f"min share {min_share:.2f}")
        for name in cols:
            p, f = meas[name]
            flags = tm.unfamiliar(tm.score(f, p))
            rates = {n: alarm_rate(flags, tm.expected_share, n, min_share) for n in (20, 50, 200) if len(flags) >= n}
            print(f"  {name:22s} n {len(flags):4d} unfamiliar {flags.mean():6.1%}  "
                  + "  ".join(f"batches of {n}: {r:.1%}" for n, r in rates.items()), flush=True)
    if args.tests:
        print(f"\nreported only (test sets, never chosen on), '{chosen}':")
        hold_s = tm.score(*meas["val_hold"][::-1])
        for name in list(TEST) + [f"test_shift_{f}" for f in FAMILIES]:
            p, f, _ = _load(cache, name)
            sc = tm.score(f, p)
            flags = tm.unfamiliar(sc)
            print(f"  {name:24s} n {len(flags):4d} unfamiliar {flags.mean():6.1%}  AUROC {auroc(hold_s, sc):.3f}  "
                  + "  ".join(f"batches of {n} (min share {ms:.2f}): {alarm_rate(flags, tm.expected_share, n, ms):.1%}"
                              for n in (50, 200) for ms in (args.min_share,) if len(flags) >= n))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["extract", "measure"])
    p.add_argument("--model", default=str(REPO / "models"))
    p.add_argument("--data")
    p.add_argument("--backend", default="auto")
    p.add_argument("--dims", type=int, default=None, help="measure: projection dimensions (default: none)")
    p.add_argument("--variant", help="measure: the variant the batch rule is measured on")
    p.add_argument("--min-share", type=float, default=0.25, help="measure: the batch rule's floor for the test sets")
    p.add_argument("--floors", type=float, nargs="+", default=[0.10, 0.15, 0.20, 0.25], help="measure: minimum shares")
    p.add_argument("--tests", action="store_true", help="measure: also report the test sets (after the choice)")
    p.add_argument("--cache", default=str(REPO / ".cache" / "trust-dev"))
    a = p.parse_args()
    extract(a) if a.what == "extract" else measure(a)
