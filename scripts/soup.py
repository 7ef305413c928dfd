"""A weight-space average ("model soup") of models trained with one recipe, calibrated on validation as ``train`` does.

    .venv/bin/python scripts/soup.py A B [--weights 0.5,0.5] --out DIR [--name NAME] [--data ROOT]

Why: models fine-tuned from the same ImageNet weights with one recipe and one seed usually lie in one basin of the
loss, where the average of their weights is a single network of the same size that often generalises better than
either (Wortsman et al., "Model soups", ICML 2022; WiSE-FT, CVPR 2022). Here: a model trained on strongly recoloured
views only (hue-invariant, a point lower in-domain) and one also shown mild views (in-domain accuracy back, hue
invariance lost on Kaggle-like cells). The soup costs nothing at serving time: one network, as before.

The models must share the recipe's architecture, input size, framing and split manifest (checked). The soup's
temperature and review threshold are fitted on the validation split exactly as ``train``'s export fits them
(``training.recipe.export``); the card records the ingredients and their weights.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hematovision.config import data_root  # noqa: E402
from hematovision.data import datasets as ds  # noqa: E402
from hematovision.modeling import persistence  # noqa: E402
from hematovision.modeling.network import build_network  # noqa: E402
from hematovision.serving.litert import check_images, export_litert  # noqa: E402
from hematovision.training.recipe import TRAINING_CLASSES, Fitted, SplitImages, TrainConfig, TrainState, export  # noqa: E402,E501


def soup_weights(models, weights):
    """Per layer, the weighted mean of the models' weights (layers matched by name)."""
    out = {}
    for layer in models[0].layers:
        if not layer.weights:
            continue
        parts = [m.get_layer(layer.name).get_weights() for m in models]
        out[layer.name] = [sum(w * p[k] for w, p in zip(weights, parts)) for k in range(len(parts[0]))]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--weights", help="comma-separated, one per model (default: equal)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default=None)
    ap.add_argument("--data", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    root = data_root(args.data)
    weights = [float(w) for w in args.weights.split(",")] if args.weights else [1.0] * len(args.models)
    if len(weights) != len(args.models) or min(weights) < 0 or sum(weights) <= 0:
        raise SystemExit("--weights: one non-negative weight per model")
    weights = [w / sum(weights) for w in weights]
    cards = [persistence.load_card(m) for m in args.models]
    hp = [c.training["hyperparameters"] for c in cards]
    for key in ("input_size", "framing", "input_norm", "dropout", "sources", "seed"):
        if len({str(h.get(key)) for h in hp}) > 1:
            raise SystemExit(f"the models differ in {key}: not one recipe")
    manifests = {(m / persistence.MANIFEST_FILE).read_bytes() for m in args.models}
    if len(manifests) > 1:
        raise SystemExit("the models have different split manifests")
    nets = [persistence.load_keras_model(m, c) for m, c in zip(args.models, cards)]
    cfg = TrainConfig(**{k: v for k, v in hp[0].items() if k in TrainConfig.__dataclass_fields__})
    net = build_network(cfg.input_size, len(TRAINING_CLASSES), dropout=cfg.dropout, input_norm=cfg.input_norm)
    for name, w in soup_weights(nets, weights).items():
        net.get_layer(name).set_weights(w)
    images = ds.read_manifest(args.models[0] / persistence.MANIFEST_FILE, root)
    train = ds.select(images, split="train")
    val = ds.select(images, split="val")
    ingredients = [{"version": c.version, "weight": w, "command": c.training.get("command", "")}
                   for c, w in zip(cards, weights)]
    state = TrainState(phase="done", history=[{"phase": "soup", "ingredients": ingredients}])
    fitted = Fitted(net, None, None, SplitImages(images, train, val, train, val), state, 0.0, time.time() - t0, None)
    out = export(fitted, args.out, cfg, root, name=args.name)
    shutil.copyfile(args.models[0] / persistence.MANIFEST_FILE, out / persistence.MANIFEST_FILE)
    persistence.update_card(out, lambda c: c.training.update(
        soup=ingredients,
        fitted_on="weight average of models early-stopped on the validation split; temperature and threshold "
                  "fitted on that split",
        command="python scripts/soup.py " + " ".join(sys.argv[1:]),
    ))
    imgs, desc = check_images(root, model_dir=out)
    rec = export_litert(out, imgs, desc)
    print(f"soup of {len(nets)} models -> {out} (LiteRT max abs diff {rec['max_abs_diff']:.1e}; "
          f"{time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
