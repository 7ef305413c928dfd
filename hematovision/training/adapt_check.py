"""Will ``adapt`` reach 90% on a lab from 20 labeled cells per class? A validation that predicts it
without a test set (issue: know when not to trust a prediction, item 3).

We cannot see the other laboratories' images, so a *lab* is simulated two ways:

* **the other source**, in leave-one-source-out terms: the Kaggle images adapting the model trained on
  PBC only (and PBC validation images adapting the model trained on Kaggle only). Labeled cells come
  from Kaggle TRAIN/VAL; Kaggle holds ~36 augmented copies of each field, so a lab's images are split
  by field (:mod:`hematovision.data.fields`): the labeled draw and the held-out images never share one;
* **a severe stain shift** of the stain-shift suite (:data:`hematovision.evaluation.shifts.SUITE`,
  held-out families) applied to the PBC *validation* images of the shipped model's split manifest.

Each lab's candidates are split once, by a hash of the cell group, into a labeled pool and a held-out
set (at most ``test_per_class`` images a class, spread over the held-out cells). Each *draw* (seed) takes
``per_class`` labeled images a class from the pool (distinct cells first), adapts, and scores the
held-out set. BatchNorm re-estimation ("lab" statistics) uses a fixed set of the pool's images per lab
(``per_class`` a class, unlabeled), the same size as a draw, for every draw.

Activations at :data:`~hematovision.training.adapt.TOP_INPUT` are cached on disk per lab, network and
draw, so variants of the top and head fits are cheap to compare (``scripts/adapt_check.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import TRAINING_CLASSES
from ..data import datasets as ds
from ..evaluation.shifts import SUITE
from ..imaging.decode import read_rgb
from ..imaging.framing import model_input
from ..modeling import persistence
from ..modeling.network import build_network
from ..stats import calibration
from .adapt import (
    AdaptConfig,
    activation_model,
    clone_network,
    fit_activations,
    pooled_features,
    restat_batchnorm,
    top_model,
    top_outputs,
)
from .loso import VARIANTS
from .recipe import TrainConfig

log = logging.getLogger("hematovision.adapt_check")

FAMILIES = {f.name: f for f in SUITE}


@dataclass(frozen=True)
class Proxy:
    """A simulated laboratory: ``source``'s candidate images, shifted by the suite's ``family``, adapting
    the network named ``model`` (``shipped``, ``without_kaggle`` or ``without_pbc``)."""

    name: str
    model: str
    source: str  # "kaggle": TRAIN + VAL (never TEST); "pbc": the validation split
    family: str = "none"


PROXIES: tuple[Proxy, ...] = (
    Proxy("kaggle (LOSO)", "without_kaggle", "kaggle"),
    Proxy("pbc (LOSO)", "without_pbc", "pbc"),
    Proxy("pbc val + lab_rapid_tight", "shipped", "pbc", "lab_rapid_tight"),
    Proxy("pbc val + restain_pale_blue", "shipped", "pbc", "restain_pale_blue"),
    Proxy("pbc val + hue_90", "shipped", "pbc", "hue_90"),
    Proxy("pbc val + lab_cyan_field", "shipped", "pbc", "lab_cyan_field"),
    Proxy("pbc val + greyscale", "shipped", "pbc", "greyscale"),
)


@dataclass(frozen=True)
class Variant:
    """One way of adapting: a config, and optionally the parent's logits mixed in (``prior``: their weight)."""

    name: str
    cfg: AdaptConfig
    prior: float = 0.0


#: What ``adapt`` did before this check: the head only, 8 views; fine-tuning variants start from it
#: (5 epochs at 1e-4, calibrated by the head-only cross-fit, unless their name says otherwise).
HEAD_ONLY = AdaptConfig(views=8, finetune_from=0, ft_epochs=5, ft_lr=1e-4, ft_folds=0)
CHOSEN = "chosen (the default): ft16 + head, lr 3e-4 x 10 epochs, 4 views, fine-tuning cross-fitted"


def variants(base: AdaptConfig = HEAD_ONLY) -> tuple[Variant, ...]:
    """The measured variants; ``head`` is the adaptation as it was before this check, the last one
    :class:`AdaptConfig`'s defaults."""
    return (
        Variant("head, clean view only", replace(base, views=1)),
        Variant("head", base),
        Variant("head + parent prior 0.3", base, prior=0.3),
        Variant("bn + head", replace(base, batchnorm="lab")),
        Variant("ft16 + head", replace(base, finetune_from=16)),
        Variant("ft15 + head", replace(base, finetune_from=15)),
        Variant("ft16 + head, no L2-SP", replace(base, finetune_from=16, ft_l2sp=0.0)),
        Variant("ft16 + head, lr 3e-4 x 10 epochs", replace(base, finetune_from=16, ft_lr=3e-4, ft_epochs=10)),
        Variant("ft16 + head, lr 3e-4 x 10 epochs, 4 views",
                replace(base, finetune_from=16, ft_lr=3e-4, ft_epochs=10, views=4)),
        Variant(CHOSEN, AdaptConfig()),
        Variant("bn + ft16 + head", replace(base, batchnorm="lab", finetune_from=16)),
        Variant("bn + ft15 + head", replace(base, batchnorm="lab", finetune_from=15)),
    )


@dataclass
class Lab:
    """A simulated lab's images: the labeled pool per class, the fixed unlabeled set, the held-out set."""

    pool: dict  # class -> list[LabeledImage]
    unlabeled: list
    test: list


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lab_split(images: Sequence[ds.LabeledImage], source: str, test_per_class: int = 100,
              unlabeled_per_class: int = 20) -> Lab:
    """Candidates of ``source`` (Kaggle TRAIN + VAL, or PBC validation), split by cell group: every other
    group (ranked by a hash of its name) is held out, at most ``test_per_class`` images a class spread
    round-robin over those groups; the rest is the labeled pool."""
    splits = ("train", "val") if source == "kaggle" else ("val",)
    pool, test, unlabeled = {}, [], []
    for c in TRAINING_CLASSES:
        groups: dict[str, list] = {}
        for i in images:
            if i.source == source and i.split in splits and i.label == c:
                groups.setdefault(i.group, []).append(i)
        ranked = sorted(groups, key=_h)
        held = [sorted(groups[g], key=lambda i: _h(i.relpath)) for g in ranked[1::2]]
        picked: list = []
        rnd = 0
        while len(picked) < test_per_class and any(rnd < len(g) for g in held):
            picked += [g[rnd] for g in held if rnd < len(g)][: test_per_class - len(picked)]
            rnd += 1
        test += picked
        pool[c] = [i for g in ranked[0::2] for i in sorted(groups[g], key=lambda i: _h(i.relpath))]
        unlabeled += draw(pool[c], unlabeled_per_class, np.random.default_rng([10_000, len(c)]))
    return Lab(pool, unlabeled, test)


def draw(pool: Sequence[ds.LabeledImage], n: int, rng: np.random.Generator) -> list:
    """``n`` images, one per cell group while groups last (a lab labels cells, not copies of one)."""
    by_group: dict[str, list] = {}
    for i in pool:
        by_group.setdefault(i.group, []).append(i)
    order = [sorted(by_group)[g] for g in rng.permutation(len(by_group))]
    copies = {g: [by_group[g][k] for k in rng.permutation(len(by_group[g]))] for g in order}
    picked: list = []
    rnd = 0
    while len(picked) < n and any(rnd < len(copies[g]) for g in order):
        picked += [copies[g][rnd] for g in order if rnd < len(copies[g])][: n - len(picked)]
        rnd += 1
    return picked


@dataclass
class Network:
    """A network to adapt, with what its images need."""

    net: object
    input_size: int
    framing: str


def shipped_network(model_dir: Path) -> Network:
    card = persistence.load_card(Path(model_dir))
    return Network(persistence.load_keras_model(Path(model_dir), card), card.input_size, card.framing)


def loso_network(run_dir: Path) -> Network:
    """A ``stain_invariant`` leave-one-source-out run's best weights (``python -m hematovision loso``)."""
    cfg = VARIANTS["stain_invariant"](TrainConfig())
    net = build_network(cfg.input_size, len(TRAINING_CLASSES), dropout=cfg.dropout, input_norm=cfg.input_norm)
    net.load_weights(str(Path(run_dir) / "best.weights.h5"))
    return Network(net, cfg.input_size, cfg.framing)


class LabImages:
    """A lab's images, read and shifted by its family; ``k`` (for families with two directions) is the
    image's rank in the lab's candidate order, so a draw and the held-out set see the same shift."""

    def __init__(self, lab: Lab, family: str):
        everyone = sorted({i.relpath: i for i in [*lab.test, *lab.unlabeled] + sum(lab.pool.values(), [])})
        self.rank = {r: k for k, r in enumerate(everyone)}
        self.family = FAMILIES[family]

    def __call__(self, items: Sequence[ds.LabeledImage]) -> list[np.ndarray]:
        return [self.family.apply(read_rgb(i.path), self.rank[i.relpath]) for i in items]


def _cached(path: Path, compute, *args) -> np.ndarray:
    """``compute(*args)``, stored at ``path`` the first time."""
    if path.exists():
        return np.load(path)
    x = np.asarray(compute(*args), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


def _clean_activations(net, nw: Network, rgb: Sequence[np.ndarray]) -> np.ndarray:
    framed = np.stack([model_input(x, nw.input_size, nw.framing) for x in rgb]).astype(np.float32)
    return activation_model(net).predict(framed, batch_size=32, verbose=0)


def _view_activations(net, nw: Network, load, picked, views: int, augment: dict, seed: int) -> np.ndarray:
    rgb = load(picked)
    bottom = activation_model(net)
    a = pooled_features(bottom, rgb, nw.input_size, views, augment, seed, framing=nw.framing)
    return a.reshape(len(rgb), views, *bottom.output.shape[1:])


@dataclass
class Score:
    proxy: str
    variant: str
    accuracies: list  # one per draw
    fit_seconds: list  # the fit from cached activations (fine-tuning, head, calibration), per draw
    baseline: float  # the parent, not adapted, on the same held-out images
    n_test: int
    accepted_accuracy: list = field(default_factory=list)  # at the version's own threshold and temperature
    coverage: list = field(default_factory=list)  # share of held-out images accepted (not flagged)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))


def run(
    proxies: Sequence[Proxy],
    networks: dict,
    images_all: Sequence[ds.LabeledImage],
    cache: Path,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    per_class: int = 20,
    chosen: Sequence[Variant] | None = None,
    test_per_class: int = 100,
) -> list[Score]:
    """Every variant on every proxy and draw; activations cached under ``cache``."""
    chosen = list(chosen or variants())
    cls_index = {c: k for k, c in enumerate(TRAINING_CLASSES)}
    views = max(v.cfg.views for v in chosen)
    out = []
    for proxy in proxies:
        nw = networks[proxy.model]
        lab = lab_split(images_all, proxy.source, test_per_class, per_class)
        load = LabImages(lab, proxy.family)
        y_test = np.array([cls_index[i.label] for i in lab.test])
        key = cache / _h(f"{proxy}|{per_class}|{test_per_class}|{views}")[:12]
        nets = {"parent": nw.net}
        if any(v.cfg.batchnorm == "lab" for v in chosen):
            t0 = time.time()
            framed = [model_input(x, nw.input_size, nw.framing) for x in load(lab.unlabeled)]
            nets["lab"] = restat_batchnorm(nw.net, framed)
            log.info("%s: BatchNorm re-estimated on %d images in %.1f s", proxy.name, len(framed), time.time() - t0)
        test_acts = {
            bn: _cached(key / f"test-{bn}.npy", _clean_activations, net, nw, load(lab.test))
            if not (key / f"test-{bn}.npy").exists() else np.load(key / f"test-{bn}.npy")
            for bn, net in nets.items()
        }
        parent_logits = top_outputs(top_model(nw.net), test_acts["parent"])[1]
        baseline = float((parent_logits.argmax(1) == y_test).mean())
        scores = {v.name: Score(proxy.name, v.name, [], [], baseline, len(y_test)) for v in chosen}
        for seed in seeds:
            picked = [i for c in TRAINING_CLASSES for i in draw(lab.pool[c], per_class, np.random.default_rng(seed))]
            y = np.array([cls_index[i.label] for i in picked])
            for bn, net in nets.items():
                acts = _cached(key / f"draw{seed}-{bn}.npy", _view_activations, net, nw, load, picked, views,
                               chosen[0].cfg.augment, seed)
                for v in [v for v in chosen if v.cfg.batchnorm == bn]:
                    t0 = time.time()
                    work = clone_network(net) if v.cfg.finetune_from else net
                    res = fit_activations(work, acts[:, : v.cfg.views], y, TRAINING_CLASSES, replace(v.cfg, seed=seed))
                    secs = time.time() - t0
                    pooled, _ = top_outputs(top_model(work), test_acts[bn])
                    logits = pooled @ res.weights + res.bias
                    if v.prior:
                        logits = (1 - v.prior) * logits + v.prior * parent_logits
                    acc = float((logits.argmax(1) == y_test).mean())
                    probs = calibration.softmax(logits / res.temperature)
                    accepted = probs.max(1) >= res.threshold.threshold
                    scores[v.name].coverage.append(float(accepted.mean()))
                    scores[v.name].accepted_accuracy.append(
                        float((probs.argmax(1) == y_test)[accepted].mean()) if accepted.any() else float("nan")
                    )
                    scores[v.name].accuracies.append(acc)
                    scores[v.name].fit_seconds.append(round(secs, 2))
                    log.info("%s | %s | draw %d: %.4f (%.1f s)", proxy.name, v.name, seed, acc, secs)
        out += list(scores.values())
    return out


def table(scores: Sequence[Score]) -> str:
    """Markdown: one row per variant, one column per proxy (mean ± s.d. over draws), and the worst proxy."""
    proxies = list(dict.fromkeys(s.proxy for s in scores))
    names = list(dict.fromkeys(s.variant for s in scores))
    by = {(s.proxy, s.variant): s for s in scores}
    lines = [
        "| variant | " + " | ".join(proxies) + " | worst proxy (mean) | fit s (mean) |",
        "|---|" + "---|" * (len(proxies) + 2),
        "| not adapted | " + " | ".join(f"{by[(p, names[0])].baseline:.1%}" for p in proxies) + " | | |",
    ]
    for n in names:
        row = [by[(p, n)] for p in proxies if (p, n) in by]
        cells = [f"{s.mean:.1%} ± {np.std(s.accuracies):.1%}" for s in row]
        worst = min(s.mean for s in row)
        secs = np.mean([t for s in row for t in s.fit_seconds])
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {worst:.1%} | {secs:.1f} |")
    return "\n".join(lines)


def to_json(scores: Sequence[Score], extra: dict) -> str:
    return json.dumps({**extra, "scores": [{**asdict(s), "mean": s.mean} for s in scores]}, indent=1) + "\n"
