"""Leave-one-class-out: how much of a white-cell type the model never learnt is flagged (issue 19's first bar).

    python scripts/loco_check.py extract --model runs/loco-eos [--data DIR]   # -> runs/loco-eos/loco_features.npz
    python scripts/loco_check.py measure --model runs/loco-eos [--json OUT]

The model is one trained with ``train --exclude-classes CLASS`` (the shipped recipe otherwise) and fitted with
``fit-trust`` (which leaves the class out of the score's bank and validation). ``extract`` runs every validation
image of its split manifest through the served classifier (4 min at most on the shared 2-core machine);
``measure`` prints, for the served score and a few variants built from the same banks (each fitted on the
in-domain validation images as fit-trust fits the served one), the share of the held-out class's validation
images flagged (either reason, at the model's review threshold) and unfamiliar, per source, and the in-domain
flagged shares, with 95% Wilson intervals. Validation images only; the test splits are never read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hematovision.modeling import persistence, unfamiliar  # noqa: E402
from hematovision.trust import loco  # noqa: E402

FEATURES = "loco_features.npz"
#: Issue 19's bar: at most this share of our in-domain PBC hold-out flagged.
PBC_BUDGET = 0.08


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("extract", "measure"))
    ap.add_argument("--model", required=True, help="a model trained with --exclude-classes and fitted by fit-trust")
    ap.add_argument("--data", help="data root (default: ../shared/data or $HEMATOVISION_DATA)")
    ap.add_argument("--json", help="measure: also write the figures to this JSON file")
    args = ap.parse_args(argv)
    model = Path(args.model)
    path = model / FEATURES
    if args.step == "extract":
        lf = loco.extract(model, args.data)
        lf.save(path)
        print(f"{len(lf.labels)} validation images in {lf.seconds:.0f} s -> {path}")
        return 0
    if not path.is_file():
        print(f"no {path}: run the extract step first", file=sys.stderr)
        return 2
    lf = loco.LocoFeatures.load(path)
    card = persistence.load_card(model)
    tm = unfamiliar.load(model, card.model_sha256)
    if tm is None:
        print(f"no usable trust.npz in {model}: run fit-trust on it", file=sys.stderr)
        return 2
    results = loco.measure(lf, tm)
    print(loco.table(lf, results))
    served = results[0]
    print(f"\nserved threshold {tm.threshold:.4f}, refitted here {served.threshold:.4f}; "
          f"max |score - trust.npz score| {served.served_check:.2e}; in-domain validation unfamiliar "
          f"{served.in_domain_unfamiliar.text()}")
    for src in ("pbc", "kaggle"):
        print(f"held-out {src} predicted as: {loco.predicted_as(lf, src)}")
    budget = loco.measure(lf, tm, pbc_flag_budget=PBC_BUDGET)
    print(f"\nEach variant's threshold lowered until {PBC_BUDGET:.0%} of in-domain PBC validation is flagged "
          "(either reason; the bar's budget, spent in full):\n")
    print(loco.table(lf, budget, with_unfamiliar=True).split("\n", 2)[2])
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": lf.version, "held_out": lf.held_out, "review_threshold": lf.review_threshold,
            "trust_threshold": tm.threshold, "extract_seconds": lf.seconds,
            "variants": [{"variant": r.variant, "threshold": r.threshold,
                          "in_domain_unfamiliar": [r.in_domain_unfamiliar.k, r.in_domain_unfamiliar.n],
                          "flagged": {f"{g}/{s}": [v.k, v.n] for (g, s), v in r.flagged.items()},
                          "unfamiliar": {f"{g}/{s}": [v.k, v.n] for (g, s), v in r.unfamiliar.items()}}
                         for r in results],
            "at_pbc_budget": {"budget": PBC_BUDGET, "variants": [
                {"variant": r.variant, "threshold": r.threshold,
                 "in_domain_unfamiliar": [r.in_domain_unfamiliar.k, r.in_domain_unfamiliar.n],
                 "flagged": {f"{g}/{s}": [v.k, v.n] for (g, s), v in r.flagged.items()},
                 "unfamiliar": {f"{g}/{s}": [v.k, v.n] for (g, s), v in r.unfamiliar.items()}} for r in budget]},
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
