"""Choose the batch rule's floors on validation only: in-domain validation batches against stain/camera-shifted ones.

    python scripts/batch_rule_check.py extract [--model models] [--cache .cache/batch-rule]
    python scripts/batch_rule_check.py measure [--model models] [--cache .cache/batch-rule]

``extract`` caches (probabilities, pooled features) of every validation image of the model's split manifest
(tagged with its source, its cell group and its half) and, from the *second* half, copies under the stain,
camera and framing shifts of ``shifts.SUITE`` (:data:`FAMILIES`). Validation is halved **by cell group** (a Kaggle
field's augmented copies all fall in one half), so the held-out half shares no field with the reference half.

``measure`` scores everything with the model's fitted trust statistics (``trust.npz``: training bank, outlier
bank and component scales as shipped), takes the *first* validation half's scores as the reference (the
unfamiliar threshold re-chosen on it, at most 5%), and reports, per rule and per floor, the share of random
batches called shifted: in-domain batches from the second half (PBC only, Kaggle only -- drawn field by field --
and mixed; 20, 50, 200 and the whole half), and shifted batches of each family (same sizes; mixed, PBC only,
Kaggle only): the share rule alone, with the pooled rank, and with the source-matched rank per floor (each image's
nearest source in the stored bank; the bank's sources rebuilt by ``fit.bank_images`` into
``CACHE/bank_sources.npy`` when the trust file has none). Then how far in-domain batches' ranks stray against six
reference sets (halves both ways, four folds by cell group), and whole groups' source-matched ranks. Test sets
never enter this script.

The shipped ``trust.npz`` was fitted on every validation image (its threshold and the components' median and
inter-quartile range), so the held-out half is not entirely unseen by those two statistics; the reference
distribution the batch statistics compare against is the first half's only.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
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
from hematovision.trust.fit import bank_images  # noqa: E402

dsr = importlib.import_module("hematovision.stats.domain_shift")

#: Shift families measured (``shifts.SUITE`` names); geometric ones are applied to PBC images only.
FAMILIES = (
    "greyscale", "hue_60", "hue_90", "restain_rapid", "restain_pale_blue", "cast_yellow", "cast_cyan",
    "cast_magenta", "lab_rapid_tight", "lab_cyan_field", "defocus", "jpeg_12", "small_in_640x480", "tight_120",
)
#: Shifted images per family and source (PBC, Kaggle); geometric families: twice as many PBC images.
PER_SOURCE = 120


def second_half(item: ds.LabeledImage) -> bool:
    """The held-out half, by cell group (a Kaggle field's copies stay together)."""
    return int(hashlib.sha256(item.group.encode()).hexdigest()[-1], 16) % 2 == 1


def extract(args) -> None:
    from hematovision.serving.classifier import Classifier  # TensorFlow/LiteRT: only when extracting

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model)
    root = data_root(args.data)
    manifest = ds.read_manifest(model_dir / persistence.MANIFEST_FILE, root)
    val = ds.select(manifest, split="val")
    clf = Classifier.load(model_dir, backend=args.backend)
    clf.trust = None
    print("backend", clf.backend, "validation", len(val), flush=True)

    def run(name, items, transform=None):
        dest = cache / f"{name}.npz"
        if dest.is_file():
            return
        t0 = time.time()
        probs, feats = [], []
        for b in range(0, len(items), 64):
            imgs = [read_rgb(i.path) for i in items[b:b + 64]]
            if transform is not None:
                imgs = [transform(x, b + k) for k, x in enumerate(imgs)]
            p, f = clf.proba_and_features(imgs)
            probs.append(p)
            feats.append(f)
        np.savez(
            dest,
            probs=np.concatenate(probs).astype(np.float32),
            feats=np.concatenate(feats).astype(np.float16),
            source=np.array([i.source for i in items]),
            group=np.array([i.group for i in items]),
            hold=np.array([second_half(i) for i in items]),
        )
        print(f"{name}: {len(items)} images in {time.time() - t0:.0f} s", flush=True)

    run("val", val)
    rng = np.random.default_rng(7)
    hold = [i for i in val if second_half(i)]

    def pick(items, n):
        return [items[j] for j in sorted(rng.choice(len(items), min(n, len(items)), replace=False))]

    hold_pbc = pick([i for i in hold if i.source == "pbc"], 2 * PER_SOURCE)
    hold_kaggle = pick([i for i in hold if i.source == "kaggle"], PER_SOURCE)
    fam = {f.name: f for f in shifts.SUITE}
    for name in FAMILIES:
        f = fam[name]
        src = hold_pbc if f.geometry else hold_pbc[:PER_SOURCE] + hold_kaggle
        run(f"shift_{name}", src, lambda x, k, f=f: f.apply(x, k))


# ---------------------------------------------------------------------- measure


def bank_sources(args, tm) -> np.ndarray:
    """The source of each bank row: from the trust file, else rebuilt as ``fit-trust`` drew the bank (cached)."""
    if tm.bank_sources is not None:
        return np.asarray(tm.bank_sources)
    path = Path(args.cache) / "bank_sources.npy"
    if not path.is_file():
        manifest = ds.read_manifest(Path(args.model) / persistence.MANIFEST_FILE, data_root(args.data))
        bank = bank_images(manifest, len(tm.bank), 0)
        if len(bank) != len(tm.bank):
            raise SystemExit(f"rebuilt bank has {len(bank)} rows, the trust file {len(tm.bank)}: re-run fit-trust")
        np.save(path, np.array([m.source for m in bank]))
    return np.load(path)


def load(cache: Path, name: str) -> dict:
    z = np.load(cache / f"{name}.npz")
    return {k: z[k] for k in z.files}


class Rule:
    """A batch rule over a batch's scores: ``fires(scores) -> bool``."""

    def __init__(self, name, fires):
        self.name, self.fires = name, fires


def draw_batches(idx_by_group: dict, size: int, draws: int, rng) -> list[np.ndarray]:
    """Batches of ``size`` drawn field by field: a random group (with replacement), then one of its images."""
    groups = list(idx_by_group)
    out = []
    for _ in range(draws):
        gs = rng.integers(0, len(groups), size)
        out.append(np.array([rng.choice(idx_by_group[groups[g]]) for g in gs]))
    return out


def measure(args) -> None:
    cache = Path(args.cache)
    tm = unfamiliar.load(args.model)
    v = load(cache, "val")
    scores = tm.score(v["feats"].astype(np.float32), v["probs"].astype(np.float64))
    conf = v["probs"].max(axis=1)
    hold = v["hold"].astype(bool)
    ref = np.sort(scores[~hold])
    thr = unfamiliar.choose_threshold(ref)
    p0 = float(np.mean(ref > thr))
    print(f"reference: first half {len(ref)} images (kaggle {np.sum((~hold) & (v['source'] == 'kaggle'))}, "
          f"groups {len(set(v['group'][~hold]))}); threshold {thr:.3f}, p0 {p0:.3f}; "
          f"held-out half {hold.sum()} images, groups {len(set(v['group'][hold]))}")
    bank_src = bank_sources(args, tm)
    ref_src = v["source"][~hold]

    def near_of(feats):
        return bank_src[unfamiliar.nearest_row(tm.embed(feats.astype(np.float32)), tm.bank)]

    near_val = near_of(v["feats"])
    conf_ref = conf[~hold]
    rev = args.review
    low0 = float(np.mean(conf_ref < rev))

    def stats_of(s, c):
        return {
            "share": float(np.mean(s > thr)),
            "rank": dsr.mean_rank(s, ref),
            "low": float(np.mean(c < rev)),
        }

    rng = np.random.default_rng(0)
    # in-domain groups (held-out half)
    src = v["source"]
    groups = {}
    for label, mask in (("pbc", hold & (src == "pbc")), ("kaggle", hold & (src == "kaggle")), ("mixed", hold)):
        idx = np.nonzero(mask)[0]
        by = {}
        for i in idx:
            by.setdefault(v["group"][i], []).append(i)
        groups[f"in-domain {label}"] = (scores, conf, near_val, by)
    for name in FAMILIES:
        z = load(cache, f"shift_{name}")
        s = tm.score(z["feats"].astype(np.float32), z["probs"].astype(np.float64))
        c = z["probs"].max(axis=1)
        nr = near_of(z["feats"])
        for label, mask in (("pbc", z["source"] == "pbc"), ("kaggle", z["source"] == "kaggle"),
                            ("mixed", np.ones(len(s), bool))):
            idx = np.nonzero(mask)[0]
            if len(idx) < 50 or (label == "mixed" and len(set(z["source"])) < 2):
                continue
            by = {i: [i] for i in idx}  # each shifted image is its own draw (copies of distinct held-out images)
            groups[f"{name} {label}"] = (s, c, nr, by)
    print(f"review threshold {rev}: validation reference low-confidence share {low0:.3f}")
    # per-group summary
    print("| group | n | unfamiliar | mean rank | low conf |")
    print("|---|---:|---:|---:|---:|")
    for gname, (s, c, _, by) in groups.items():
        idx = np.concatenate([np.array(x) for x in by.values()])
        st = stats_of(s[idx], c[idx])
        print(f"| {gname} | {len(idx)} | {st['share']:.1%} | {st['rank']:.3f} | {st['low']:.1%} |")
    sizes = (20, 50, 200)
    draws = args.draws
    # per batch: stats, cached for every group and size
    table = {}
    for gname, (s, c, nr, by) in groups.items():
        for n in sizes:
            bs = draw_batches(by, n, draws, rng)
            table[(gname, n)] = [(s[b], c[b], nr[b]) for b in bs]
        idx = np.concatenate([np.array(x) for x in by.values()])
        table[(gname, "all")] = [(s[idx], c[idx], nr[idx])]

    def verdict(s, nr=None, min_share=dsr.MIN_SHARE, min_rank=dsr.MIN_RANK, with_scores=True, floors=None):
        saved = dict(dsr.MIN_RANK_BY_SOURCE)
        dsr.MIN_RANK_BY_SOURCE.update(floors or {})
        try:
            return dsr.domain_shift(
                s > thr, p0, scores=s if with_scores else None, reference=scores[~hold], min_share=min_share,
                min_rank=min_rank, sources=nr, reference_sources=None if nr is None else ref_src,
            ).detected
        finally:
            dsr.MIN_RANK_BY_SOURCE.clear()
            dsr.MIN_RANK_BY_SOURCE.update(saved)

    rules = {"current (share >= 0.15 only)": lambda s, c, nr: verdict(s, with_scores=False)}
    for mr in args.ranks:
        rules[f"share or pooled rank >= {mr:.2f}"] = lambda s, c, nr, mr=mr: verdict(s, min_rank=mr)
    for fp in args.pbc_floors:
        for fk in args.kaggle_floors:
            fl = {"pbc": fp, "kaggle": fk}
            rules[f"share or source-matched rank >= pbc {fp:.2f} / kaggle {fk:.2f}"] = (
                lambda s, c, nr, fl=fl: verdict(s, nr, floors=fl))
    # Not served (a candidate): the share rule source-matched too. Each nearest-source part of at least MIN_BATCH
    # images against its own source's reference share (first half, by nearest source), floor max(MIN_SHARE, k * p0_s);
    # the rank rule as served.
    p0_src = {so: float(np.mean(scores[~hold][near_val[~hold] == so] > thr)) for so in ("pbc", "kaggle")}
    print(f"reference unfamiliar share by nearest source: {p0_src}")

    def share_by_source(s, nr, k):
        for so, q in p0_src.items():
            m = nr == so
            n = int(m.sum())
            if n < dsr.MIN_BATCH:
                continue
            x, q = int((s[m] > thr).sum()), max(q, dsr.MIN_EXPECTED)
            if float(dsr.binom_tail(n, q)[x]) < dsr.ALPHA and x / n >= max(dsr.MIN_SHARE, k * q):
                return True
        return False

    def share_by_composition(s, nr, k):
        """The whole batch against the share its mix of nearest sources would have in-domain."""
        q = max(float(np.mean([p0_src.get(so, p0) for so in nr])), dsr.MIN_EXPECTED)
        x, n = int((s > thr).sum()), len(s)
        return n >= dsr.MIN_BATCH and float(dsr.binom_tail(n, q)[x]) < dsr.ALPHA and x / n >= max(dsr.MIN_SHARE, k * q)

    for k in args.share_factors:
        rules[f"share by nearest source (floor max(0.15, {k:g} x its share)) or source-matched rank as served"] = (
            lambda s, c, nr, k=k: verdict(s, nr, min_share=1.01) or share_by_source(s, nr, k))
        rules[f"share against the batch's source mix (floor max(0.15, {k:g} x that share)) or source-matched rank"] = (
            lambda s, c, nr, k=k: verdict(s, nr, min_share=1.01) or share_by_composition(s, nr, k))
    for ml in args.lows:
        rules[f"low conf >= {ml:.2f} (alone, BBSD-like)"] = (
            lambda s, c, nr, ml=ml: bool(np.mean(c < rev) >= ml and len(c) >= 20))
    print(f"\nshare of random batches called shifted (draws per cell: {draws}; 'all' = the whole group as one batch)")
    for rname, fn in rules.items():
        print(f"\n{rname}")
        for gname in groups:
            cells = []
            for n in (*sizes, "all"):
                bs = table[(gname, n)]
                rate = np.mean([fn(s, c, nr) for s, c, nr in bs])
                cells.append(f"{n}: {rate:6.1%}")
            print(f"  {gname:28s} " + "  ".join(cells), flush=True)


def in_domain_spread(args, folds: int = 4, draws: int = 1000) -> None:
    """How far in-domain batches' mean rank strays, with other reference sets: the half split, the halves swapped,
    and ``folds`` folds by cell group (each against the other folds: a reference nearer the full validation set).
    Pooled: the whole batch against all reference scores. Source-matched: each part of the batch by nearest bank
    source (at least 20 images) against that source's reference scores, as served with sources."""
    cache = Path(args.cache)
    tm = unfamiliar.load(args.model)
    v = load(cache, "val")
    s = tm.score(v["feats"].astype(np.float32), v["probs"].astype(np.float64))
    bank_src = bank_sources(args, tm)
    near = bank_src[unfamiliar.nearest_row(tm.embed(v["feats"].astype(np.float32)), tm.bank)]
    src, grp, hold = v["source"], v["group"], v["hold"].astype(bool)
    fold = np.array([int(hashlib.sha256((x + "f").encode()).hexdigest()[:8], 16) % folds for x in grp])
    splits = [("half", ~hold, hold), ("half swapped", hold, ~hold)]
    splits += [(f"fold {k} of {folds}", fold != k, fold == k) for k in range(folds)]
    rng = np.random.default_rng(3)
    print(f"\nin-domain batches' mean rank, 99th percentile / max of {draws} draws (field by field)")
    print("| reference / batches from | source | fields | pooled: whole | n 20 | n 50 | n 200 "
          "| matched PBC part: n 20 | n 50 | n 200 | matched Kaggle part: n 20 | n 50 | n 200 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, refm, tem in splits:
        ref = np.sort(s[refm])
        by_src = {x: np.sort(s[refm & (src == x)]) for x in ("pbc", "kaggle")}
        for so in ("pbc", "kaggle"):
            idx = np.nonzero(tem & (src == so))[0]
            by: dict = {}
            for i in idx:
                by.setdefault(grp[i], []).append(i)
            pooled, parts = [], {"pbc": [], "kaggle": []}
            for n in (20, 50, 200):
                r, pr = [], {"pbc": [], "kaggle": []}
                for b in draw_batches(by, n, draws, rng):
                    r.append(dsr.mean_rank(s[b], ref))
                    for x in pr:
                        part = s[b][near[b] == x]
                        if len(part) >= dsr.MIN_BATCH:
                            pr[x].append(dsr.mean_rank(part, by_src[x]))
                pooled.append(f"{np.quantile(r, 0.99):.3f} / {max(r):.3f}")
                for x in parts:
                    parts[x].append(f"{np.quantile(pr[x], 0.99):.3f} / {max(pr[x]):.3f}" if pr[x] else "-")
            print(f"| {name} | {so} | {len(by)} | {dsr.mean_rank(s[idx], ref):.3f} | " + " | ".join(pooled) + " | "
                  + " | ".join(parts["pbc"]) + " | " + " | ".join(parts["kaggle"]) + " |", flush=True)


def source_matched(args) -> None:
    """Not served: each image's rank among the validation scores of its nearest source (the source of its nearest
    first-half validation image in the trust embedding), to see what a source-aware reference would separate."""
    cache = Path(args.cache)
    tm = unfamiliar.load(args.model)
    v = load(cache, "val")
    s = tm.score(v["feats"].astype(np.float32), v["probs"].astype(np.float64))
    hold, src = v["hold"].astype(bool), v["source"]
    e_ref, s_ref = tm.embed(v["feats"][~hold].astype(np.float32)), src[~hold]
    refs = {so: np.sort(s[(~hold) & (src == so)]) for so in ("pbc", "kaggle")}

    def report(name, sc, feats, true_src):
        near = s_ref[(tm.embed(feats.astype(np.float32)) @ e_ref.T).argmax(axis=1)]
        for so in ("pbc", "kaggle"):
            m = true_src == so
            if m.sum() < 50:
                continue
            ranks = [dsr.mean_rank(sc[m & (near == x)], refs[x]) * np.sum(m & (near == x)) for x in refs
                     if np.any(m & (near == x))]
            print(f"| {name} | {so} | {np.mean(near[m] == so):.0%} | {sum(ranks) / m.sum():.3f} | "
                  f"{dsr.mean_rank(sc[m], np.sort(s[~hold])):.3f} |")

    print("\nsource-matched mean rank (not served): | group | source | nearest source right | matched | pooled |")
    print("|---|---|---:|---:|---:|")
    report("in-domain (held-out half)", s[hold], v["feats"][hold], src[hold])
    for name in FAMILIES:
        z = load(cache, f"shift_{name}")
        report(name, tm.score(z["feats"].astype(np.float32), z["probs"].astype(np.float64)), z["feats"], z["source"])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["extract", "measure"])
    p.add_argument("--model", default=str(REPO / "models"))
    p.add_argument("--data")
    p.add_argument("--backend", default="auto")
    p.add_argument("--cache", default=str(REPO / ".cache" / "batch-rule"))
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--review", type=float, default=0.952, help="measure: review threshold (confidence)")
    p.add_argument("--ranks", type=float, nargs="+", default=[0.90])
    p.add_argument("--pbc-floors", type=float, nargs="+", default=[0.60, 0.62, 0.65])
    p.add_argument("--kaggle-floors", type=float, nargs="+", default=[0.90])
    p.add_argument("--lows", type=float, nargs="+", default=[0.3])
    p.add_argument("--share-factors", type=float, nargs="+", default=[2.0, 3.0],
                   help="measure: the source-matched share rule's floor, max(0.15, k x the source's share)")
    a = p.parse_args()
    if a.what == "extract":
        extract(a)
    else:
        measure(a)
        in_domain_spread(a)
        source_matched(a)
