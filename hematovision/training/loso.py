"""Leave-one-source-out (LOSO) validation: the training recipe judged on a laboratory it never saw.

A user's own images come from another laboratory: another stain, camera,
magnification and crop. The test splits of our two sources cannot show how the
model does there, because it trained on both. LOSO can, without looking at any
test set while choosing: train the same recipe on one source only (validating
and early-stopping on that source alone), then measure it on the other source's
test split.

Each *variant* is one training configuration. ``baseline`` is the recipe
without the robustness measures (rotations, flips and small shifts only);
``robust`` is the first shipped recipe (stain, colour, scale, blur and JPEG
jitter); ``strong`` widens the scale range and strengthens the stain and colour
jitter; ``strong_norm`` adds per-image colour standardisation. All four see the
whole image. ``strong_cell`` (shipped now) is ``strong`` on the framed cell
(:mod:`hematovision.imaging.framing`).
``python -m hematovision loso`` runs the chosen variants on the same machine and
writes the table into ``evaluation.json`` and the model card, so every change
to training can be judged by it.

Runs are resumable: each finished run is stored in ``loso.json`` in the work
directory and skipped when the command is run again; features are cached like
the main run's (and shared with it).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..config import TRAINING_CLASSES, data_root
from ..data import datasets as ds
from ..imaging.decode import read_rgb
from ..modeling import persistence
from ..modeling.features import layer_outputs_keras
from ..modeling.network import build_network
from ..stats import metrics as m
from .adapt import POOL_LAYER, AdaptConfig, adapt_head, feature_model, head_weights, pooled_features
from .recipe import AUGMENT_RECIPES, TrainConfig, cache_features, clean_cache_key, fit, limit_images

log = logging.getLogger("hematovision.loso")

#: The test split that measures a source when it is held out.
HELD_OUT_TEST = {"kaggle": "kaggle_test", "pbc": "pbc_test"}

def _variant(recipe: str, **changes):
    """A variant: the base config with augmentation recipe ``recipe`` and ``changes``."""
    return lambda cfg: replace(cfg, augment=AUGMENT_RECIPES[recipe](), **changes)


#: The augmentation recipes on the whole image (``framing="full"``), as they were first measured.
VARIANTS = {name: _variant(name, framing="full") for name in AUGMENT_RECIPES}
#: ``strong`` plus per-image colour standardisation inside the model (``model.ChannelStandardise``).
VARIANTS["strong_norm"] = _variant("strong", input_norm="channel", framing="full")
#: ``strong`` on the framed cell (:mod:`hematovision.imaging.framing`): the shipped recipe.
VARIANTS["strong_cell"] = _variant("strong", framing="cell")
#: ``strong_cell`` plus a white balance on the smear's background inside the model (``model.BackgroundBalance``).
VARIANTS["strong_cell_bg"] = _variant("strong", framing="cell", input_norm="background")
#: Hue taken away as a cue: strong colour, stain-vector, cast, gamma and greyscale augmentation, any-stain framing.
VARIANTS["stain_invariant"] = _variant("stain_invariant", framing="cell_any_stain")


@dataclass
class LosoRun:
    """One model trained without one source, measured on every test set."""

    variant: str
    trained_on: str
    held_out: str
    held_out_test: str
    held_out_accuracy: float
    held_out_accuracy_ci95: list
    held_out_macro_f1: float
    test_accuracy: dict  # every test set key -> accuracy (the trained-on source's own split too)
    val_accuracy: float
    best_epoch: int
    epochs_run: int
    fit_seconds: float
    work_dir: str


def _test_subset(images: list[ds.LabeledImage], key: str, cfg: TrainConfig) -> list[ds.LabeledImage]:
    """A test set, cut to ``cfg.limit_per_split`` per class for smoke runs, as training cuts its splits."""
    return limit_images(ds.test_set(images, key), cfg.limit_per_split, cfg.seed)


def _test_features(bottom, cfg: TrainConfig, images: list[ds.LabeledImage], cache_root: Path) -> dict:
    """Clean bottom features of each test set, cached beside the training views."""
    out = {}
    cls_index = {c: k for k, c in enumerate(TRAINING_CLASSES)}
    for key in ds.TEST_SETS:
        subset = _test_subset(images, key, cfg)
        if not subset:
            continue
        x = cache_features(
            bottom, [(i, -1) for i in subset], cache_root / clean_cache_key(cfg) / f"test-{key}", cfg, desc=key
        )
        out[key] = (x, np.array([cls_index[i.label] for i in subset]))
    return out


def _measure(top, feats: dict, batch_size: int = 256) -> dict:
    res = {}
    for key, (x, y) in feats.items():
        logits = top.predict(x.astype(np.float32), batch_size=batch_size, verbose=0)
        pred = logits.argmax(1)
        cm = m.confusion_matrix(y, pred, len(TRAINING_CLASSES))
        ok = int((pred == y).sum())
        res[key] = {
            "accuracy": ok / len(y),
            "ci95": list(m.wilson_interval(ok, len(y))),
            "macro_f1": m.macro_f1(cm),
            "n": int(len(y)),
        }
    return res


def run_loso(work: Path, cfg: TrainConfig, root: Path | None = None, cache_root: Path | None = None,
             variants: tuple[str, ...] = ("baseline", "robust")) -> list[LosoRun]:
    """Train each variant once per held-out source and measure it; resumable through ``work/loso.json``."""
    root = root or data_root()
    work = Path(work)
    cache_root = Path(cache_root) if cache_root else work / "cache"
    work.mkdir(parents=True, exist_ok=True)
    record = work / "loso.json"
    done = {
        (r["variant"], r["held_out"]): LosoRun(**r) for r in (json.loads(record.read_text()) if record.exists() else [])
    }
    results: list[LosoRun] = []
    for variant in variants:
        vcfg = VARIANTS[variant](cfg)
        for held_out in cfg.sources:
            if (variant, held_out) in done:
                results.append(done[(variant, held_out)])
                continue
            trained_on = tuple(s for s in cfg.sources if s != held_out)
            run_dir = work / f"{variant}-without-{held_out}"
            log.info("LOSO %s: train on %s, hold out %s", variant, ",".join(trained_on), held_out)
            t0 = time.time()
            fitted = fit(run_dir, replace(vcfg, train_on=trained_on), root, cache_root=cache_root)
            feats = _test_features(fitted.bottom, vcfg, fitted.images, cache_root)
            scores = _measure(fitted.top, feats)
            key = HELD_OUT_TEST[held_out]
            st = fitted.state
            ft = [h for h in st.history if h["phase"] == "finetune"]
            best = next((h for h in ft if h["epoch"] == st.best_epoch), ft[-1] if ft else {"val_acc": float("nan")})
            run = LosoRun(
                variant=variant,
                trained_on=",".join(trained_on),
                held_out=held_out,
                held_out_test=key,
                held_out_accuracy=scores[key]["accuracy"],
                held_out_accuracy_ci95=scores[key]["ci95"],
                held_out_macro_f1=scores[key]["macro_f1"],
                test_accuracy={k: v["accuracy"] for k, v in scores.items()},
                val_accuracy=float(best["val_acc"]),
                best_epoch=st.best_epoch,
                epochs_run=len(ft),
                fit_seconds=round(time.time() - t0, 1),
                work_dir=str(run_dir),
            )
            log.info("LOSO %s without %s: %s accuracy %.4f", variant, held_out, key, run.held_out_accuracy)
            results.append(run)
            done[(variant, held_out)] = run
            record.write_text(json.dumps([asdict(r) for r in done.values()], indent=1) + "\n")
    return results


def summary(
    results: list[LosoRun], cfg: TrainConfig, adaptation: list | None = None, adaptation_variant: str = ""
) -> dict:
    """The JSON block for ``evaluation.json`` and the model card: each run, the gain of each
    variant over ``baseline`` per held-out source, and the adaptation curve (measured on
    ``adaptation_variant``'s models) when there is one."""
    by = {(r.variant, r.held_out): r for r in results}
    gains = {}
    for (variant, held_out), r in by.items():
        base = by.get(("baseline", held_out))
        if variant != "baseline" and base is not None:
            gains.setdefault(variant, {})[held_out] = r.held_out_accuracy - base.held_out_accuracy
    return {
        "rule": "train the recipe on one source only (validating on that source), test on the other source's test "
                "split; "
                "'baseline' = the same recipe without stain, colour, scale, blur and JPEG augmentation",
        "hyperparameters": {"max_epochs": cfg.max_epochs, "head_epochs": cfg.head_epochs, "input_size": cfg.input_size,
                            "views_per_image": cfg.views_per_image, "first_trainable_block": cfg.first_trainable_block},
        "runs": [asdict(r) for r in results],
        "gain_over_baseline": gains,
        **(
            {
                "adaptation": {
                    "rule": f"adapt the {adaptation_variant} LOSO model's head with N labeled images per class "
                            f"(distinct cells) "
                    "from the held-out source's train split; accuracy on its test split; per draw of labeled images",
                    "variant": adaptation_variant,
                    "points": [asdict(p) for p in adaptation],
                }
            }
            if adaptation
            else {}
        ),
    }


def table(results: list[LosoRun]) -> str:
    """A Markdown table of the runs (for docs/generalisation.md)."""
    lines = [
        "| variant | trained on | held out (test split) | accuracy on held-out | 95% CI | macro-F1 | own-source test "
        "| best epoch | wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        own = ", ".join(
            f"{k} {v:.1%}" for k, v in r.test_accuracy.items() if k != r.held_out_test and not k.startswith(r.held_out)
        )
        lo, hi = r.held_out_accuracy_ci95
        lines.append(
            f"| {r.variant} | {r.trained_on} | {r.held_out} ({r.held_out_test}) | **{r.held_out_accuracy:.1%}** | "
            f"{lo:.1%}–{hi:.1%} | "
            f"{r.held_out_macro_f1:.3f} | {own} | {r.best_epoch} | {r.fit_seconds / 60:.0f} min |"
        )
    return "\n".join(lines)


def record_in_model(model_dir: Path, block: dict) -> None:
    """Write the LOSO block into ``evaluation.json`` and the model card beside a model."""
    model_dir = Path(model_dir)
    ev = model_dir / persistence.EVALUATION_FILE
    if ev.exists():
        report = json.loads(ev.read_text())
        report["leave_one_source_out"] = block
        ev.write_text(json.dumps(report, indent=1) + "\n")
    persistence.update_card(model_dir, lambda c: c.training.__setitem__("leave_one_source_out", block))


# --------------------------------------------------------------------------- adaptation curve


@dataclass
class AdaptationPoint:
    """Accuracy on the held-out source's test split after adapting with ``per_class`` labeled images."""

    held_out: str
    per_class: int
    accuracies: list  # one per draw of labeled images
    mean_accuracy: float
    seconds_fit: float  # the head fit and calibration, mean over draws (features excluded)
    min_distinct_cells: int = (
        0  # the fewest original cells behind one class's images, over classes and draws (0: not recorded)
    )


def _loso_network(run: LosoRun, cfg: TrainConfig):
    """The run's best network; ``cfg`` is the run's variant config."""
    net = build_network(cfg.input_size, len(TRAINING_CLASSES), dropout=cfg.dropout, input_norm=cfg.input_norm)
    net.load_weights(str(Path(run.work_dir) / "best.weights.h5"))
    return net


def _draw(pool: list[ds.LabeledImage], n: int, rng: np.random.Generator) -> list[ds.LabeledImage]:
    """``n`` images, one per original cell while cells last (a lab labels cells, not augmented
    copies of one). Kaggle TRAIN holds only 15 monocyte cells (whole smear fields,
    :mod:`hematovision.data.fields`), so a larger ``n`` goes on with further copies of the drawn
    cells, in the same cell order; :func:`distinct_cells` says how many cells a draw spans."""
    by_group: dict[str, list[ds.LabeledImage]] = {}
    for i in pool:
        by_group.setdefault(i.group, []).append(i)
    groups = sorted(by_group)
    order = [groups[g] for g in rng.permutation(len(groups))]
    copies = {g: [by_group[g][k] for k in rng.permutation(len(by_group[g]))] for g in order}
    picked: list[ds.LabeledImage] = []
    rnd = 0
    while len(picked) < n and any(rnd < len(copies[g]) for g in order):
        picked += [copies[g][rnd] for g in order if rnd < len(copies[g])][: n - len(picked)]
        rnd += 1
    return picked


def distinct_cells(images: list[ds.LabeledImage]) -> int:
    """How many original cells (groups) a set of labeled images spans."""
    return len({i.group for i in images})


def adaptation_curve(
    results: list[LosoRun],
    cfg: TrainConfig,
    root: Path | None = None,
    per_class: tuple[int, ...] = (5, 10, 20, 50),
    draws: int = 3,
    variant: str = "robust",
    adapt_cfg=None,
) -> list[AdaptationPoint]:
    """For each held-out source: adapt that LOSO model's head with ``per_class`` labeled images per class
    drawn from the held-out source's *train* split, score on its *test* split. ``per_class`` 0 = no adaptation."""
    root = root or data_root()
    adapt_cfg = adapt_cfg or AdaptConfig(views=8, finetune_from=0)  # the head-only curve, as first measured
    images = ds.discover(root)
    cls_index = {c: k for k, c in enumerate(TRAINING_CLASSES)}
    points = []
    for run in [r for r in results if r.variant == variant]:
        vcfg = VARIANTS[run.variant](cfg)
        net = _loso_network(run, vcfg)
        feats_model = feature_model(net)
        w0, b0 = head_weights(net)
        test = _test_subset(images, run.held_out_test, cfg)
        x_test = layer_outputs_keras(
            net, [i.path for i in test], cfg.input_size, vcfg.framing, POOL_LAYER, desc=run.held_out_test
        )
        y_test = np.array([cls_index[i.label] for i in test])
        base_acc = float(((x_test @ w0 + b0).argmax(1) == y_test).mean())
        points.append(AdaptationPoint(run.held_out, 0, [base_acc], base_acc, 0.0))
        pool = {
            c: [i for i in ds.select(images, source=run.held_out, split="train") if i.label == c]
            for c in TRAINING_CLASSES
        }
        top_n = max(per_class)
        per_draw = []
        for d in range(draws):
            rng = np.random.default_rng([cfg.seed, d])
            flat = [i for c in TRAINING_CLASSES for i in _draw(pool[c], top_n, rng)]
            rank = [
                k - next(j for j, x in enumerate(flat) if x.label == i.label) for k, i in enumerate(flat)
            ]  # position within its class
            feats = pooled_features(
                feats_model,
                [read_rgb(i.path) for i in flat],
                cfg.input_size,
                adapt_cfg.views,
                adapt_cfg.augment,
                adapt_cfg.seed + d,
                framing=vcfg.framing,
            )
            per_draw.append((flat, np.array(rank), feats))
        for n in per_class:
            accs, secs, cells = [], [], []
            for flat, rank, feats in per_draw:
                idx = np.flatnonzero(rank < n)  # the first n drawn of each class: the smaller sets nest in the larger
                y = np.array([cls_index[flat[k].label] for k in idx])
                res = adapt_head(feats[idx], y, w0, b0, TRAINING_CLASSES, adapt_cfg)
                accs.append(float(((x_test @ res.weights + res.bias).argmax(1) == y_test).mean()))
                secs.append(res.seconds)
                cells.append(
                    min(distinct_cells([flat[k] for k in idx if flat[k].label == c]) for c in TRAINING_CLASSES)
                )
            points.append(
                AdaptationPoint(run.held_out, n, accs, float(np.mean(accs)), float(np.mean(secs)), min(cells))
            )
            log.info("adaptation %s with %d/class: %s", run.held_out, n, accs)
    return points


def adaptation_table(points: list[AdaptationPoint]) -> str:
    lines = [
        "| held-out source | labeled images per class | fewest distinct cells in a class | accuracy on its test split "
        "(mean) | per draw | head fit + calibration |",
        "|---|---|---|---|---|---|",
    ]
    for p in points:
        cells = str(p.min_distinct_cells) if p.per_class and p.min_distinct_cells else "–"
        lines.append(
            f"| {p.held_out} | {p.per_class or 'none (LOSO model as is)'} | {cells} | **{p.mean_accuracy:.1%}** | "
            f"{', '.join(f'{a:.1%}' for a in p.accuracies)} | {p.seconds_fit:.1f} s |"
        )
    return "\n".join(lines)
