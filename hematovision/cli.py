"""Command line: ``python -m hematovision COMMAND --help``, COMMAND one of
``train, loso, stain-suite, adapt, evaluate, classify, report, export-litert, fields, fit-trust``.

``classify`` serves from ``model.tflite`` (LiteRT) when the model directory has a
checked one, without importing TensorFlow; otherwise from ``model.keras``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import json
import logging
import os
import shlex
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from .config import data_root, model_dir
from .data import fields
from .data.labeled import labeled_from_path
from .detection.cells import classify_fields
from .detection.report import RunSummary, csv_row, field_columns
from .evaluation import shift_suite
from .evaluation.evaluate import evaluate_labeled, evaluate_model_on_test_sets, summary_lines
from .imaging.framing import FRAMINGS
from .imaging.sources import iter_paths
from .modeling import persistence, unfamiliar
from .modeling.network import INPUT_NORMS
from .reports.content import ReportInputError, report_from_csv
from .reports.pdf import render_pdf
from .reports.results_file import (
    ResultsFileError,
    ResultsWriter,
    hold_csv,
    hold_results,
    image_row,
    result_columns,
)
from .reports.tables import neutralise
from .review.reporting import report_reviews
from .review.store import ReviewDBError, ReviewStore, db_path
from .serving import ray_engine
from .serving.classifier import Classifier
from .serving.litert import check_images, export_litert
from .stats import round_threshold
from .training import loso, recipe
from .training.adapt import AdaptConfig, adapt_labeled, labeled_from_reviews
from .training.deep import DeepConfig, deep_fit
from .training.recipe import AUGMENT_RECIPES, VIEW_ORDERS, TrainConfig, check_exclude_classes, refit_config
from .trust import fit_model_dir, refit_version
from .trust import summary_lines as trust_summary_lines

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal


class UsageError(Exception):
    """Unusable arguments or a missing/corrupt model: one line on stderr, exit code 2."""


#: The help of every subcommand's ``--data`` and ``--model`` (where the default is the same).
DATA_HELP = "data root (default: $HEMATOVISION_DATA or ../shared/data)"
MODEL_HELP = "model directory (default: $HEMATOVISION_MODEL or the shipped models/)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hematovision",
        description="HematoVision: white-blood-cell classification (research and education use, not diagnosis).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("classify", help="classify images, folders and zip archives into a CSV report")
    c.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files (JPEG, PNG, BMP, TIFF), folders (recursive) or .zip archives",
    )
    c.add_argument("--out", required=True, help="CSV report to write ('-' for standard output)")
    c.add_argument(
        "--threshold", type=float, help="flag predictions whose confidence is below this (default: the model's)"
    )
    c.add_argument("--model", help=MODEL_HELP)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument(
        "--fields", action="store_true",
        help="each image is a smear field: find every white cell in it and classify each (one row per cell)",
    )
    c.add_argument(
        "--summary", metavar="JSON",
        help="also write a summary: counts per class (the differential, unfamiliar cells left out), flagged, "
             "unfamiliar, errors, and whether the batch looks unlike the training data (domain_shift); per field "
             "with --fields",
    )
    c.add_argument(
        "--no-batch-hold", dest="batch_hold", action="store_false",
        help="when the batch looks unlike the training data, keep its confident predictions accepted instead of "
             "flagging every prediction for review (flag_reason batch_shift, the default); standard output then "
             "streams row by row instead of at the end of the run",
    )
    _ray_arguments(c)

    ft = sub.add_parser(
        "fit-trust",
        help="fit the unfamiliar-cell score (trust.npz) for a model from its split manifest's images, measure it "
             "and record it in the model card and evaluation.json",
    )
    ft.add_argument("--model", help=MODEL_HELP)
    ft.add_argument("--data", help=DATA_HELP)
    ft.add_argument("--bank", type=int, default=4000, help="training images in the nearest-neighbour bank")
    ft.add_argument("--measure", type=int, default=600, help="images per test set for the measurement")

    e = sub.add_parser("evaluate", help="evaluate a model on the test sets, or on a labeled folder/zip")
    e.add_argument(
        "path", nargs="?", help="a folder of class folders or a .zip of them (default: the recorded test sets)"
    )
    e.add_argument("--model", help="model directory (default: the shipped models/)")
    e.add_argument("--data", help=DATA_HELP)
    e.add_argument(
        "--out",
        help="JSON report for PATH (default: print only); the test-set evaluation always writes evaluation.json "
             "beside the model",
    )
    e.add_argument("--predictions", help="with PATH: also write per-image predictions to this CSV")

    t = sub.add_parser("train", help="train, calibrate and evaluate a new model (resumable)")
    t.add_argument("--data", help=DATA_HELP)
    t.add_argument("--out", required=True, help="new model directory to write")
    t.add_argument("--name", help="model name, the first part of its version (default: the --out folder's name)")
    t.add_argument(
        "--work",
        help="working directory for the feature cache and checkpoints (default: .cache/train-<out name>); rerun with "
             "the same one to resume",
    )
    t.add_argument(
        "--input-size",
        type=int,
        default=192,
        help="square input side in pixels (default 192; see docs/performance.md for why not 224)",
    )
    t.add_argument("--max-epochs", type=int, default=14)
    t.add_argument(
        "--refit",
        action="store_true",
        help="the shipped recipe: an early-stopped run on the validation split chooses the epochs and calibrates; "
             "then the same recipe is refitted on train and validation images (see docs/kaggle-fields.md)",
    )
    t.add_argument(
        "--refit-from",
        metavar="MODEL_DIR",
        help="refit: train the same recipe on train and validation images for the fine-tuning epochs this "
             "early-stopped model kept, and ship with its temperature and threshold",
    )
    t.add_argument(
        "--patience",
        type=int,
        default=3,
        help="fine-tuning epochs without a better validation loss before stopping (default 3; the best epoch is kept)",
    )
    t.add_argument(
        "--lr-finetune", type=float, default=TrainConfig.lr_finetune,
        help=f"learning rate of the fine-tuning phase (default {TrainConfig.lr_finetune:g})",
    )
    t.add_argument(
        "--first-trainable-block", type=int, default=13, help="fine-tune MobileNetV2 from this block (13-16) upwards"
    )
    t.add_argument(
        "--limit-per-class", type=int, default=0, help="use at most N images per source, split and class (smoke runs)"
    )
    t.add_argument("--sources", default="kaggle,pbc", help="comma-separated data sources to train on")
    t.add_argument("--no-evaluate", action="store_true", help="skip the test-set evaluation")
    t.add_argument("--exclude-classes", default="",
                   help="comma-separated classes whose images are left out of fitting and validation (leave-one-class-"
                        "out: docs/trust.md); the network keeps every output, the feature cache is shared")
    t.add_argument(
        "--augment",
        choices=sorted(AUGMENT_RECIPES),
        help="augmentation recipe (default: strong; the shipped model uses stain_invariant; docs/generalisation.md)",
    )
    t.add_argument(
        "--views",
        help="augmented views cached per training image and source, e.g. kaggle=2,pbc=4 (default kaggle=2,pbc=2)",
    )
    t.add_argument(
        "--mild-views",
        help="geometry-only views (the source's own colours) cached per training image and source, e.g. pbc=1; "
             "each epoch one is shown instead of a recipe view with probability --mild-share (default: none)",
    )
    t.add_argument("--extra-views",
                   help="more of the recipe's views per training image and source, e.g. pbc=4: the same as raising "
                        "--views by as many, but cached apart so the existing view cache is reused (default: none)")
    t.add_argument("--view-order", choices=VIEW_ORDERS, default=TrainConfig.view_order,
                   help="cycle: epoch e shows each image's view e mod n (default); shuffle: a view drawn at random "
                        "each epoch, so views past the epochs early stopping keeps are seen too")
    t.add_argument("--average-from", type=int, default=TrainConfig.average_from,
                   help="weight averaging: run all --max-epochs fine-tuning epochs without early stopping and ship "
                        "the mean of the weights from this epoch on (default: off, the best epoch is kept)")
    t.add_argument("--fit-seed", type=int, default=None,
                   help="the fitting's own seed (head initialisation, dropout, batch order; default: the recipe's "
                        "seed); the cached views are reused, so replicates measure run-to-run noise cheaply")
    t.add_argument("--mild-share", type=float, default=TrainConfig.mild_share,
                   help="where an image has mild views, the share of epochs that show one "
                        f"(default {TrainConfig.mild_share})")
    t.add_argument(
        "--input-norm",
        choices=INPUT_NORMS,
        default="none",
        help="per-image colour layer inside the model: channel standardisation or background white balance (default: "
             "none; both measured worse, docs/generalisation.md)",
    )
    t.add_argument(
        "--framing",
        choices=list(FRAMINGS),
        default="cell",
        help="cell: a square around the nucleus located by B - G (default); cell_any_stain: the same, falling back to "
             "the densest stain where B - G finds none; full: the whole image",
    )
    t.add_argument(
        "--cache",
        default=".cache/features",
        help="feature cache shared by runs, keyed by what decides the features (default: .cache/features)",
    )
    t.add_argument(
        "--loso",
        action="store_true",
        help="also run leave-one-source-out validation (baseline and strong_cell) and record it in the new model",
    )
    t.add_argument("--deep-from", metavar="MODEL_DIR",
                   help="the deep phase instead of the cached recipe: start from this model, train every layer but "
                        "BatchNorm on views drawn fresh every epoch (--max-epochs, --patience apply; "
                        "docs/generalisation.md)")
    t.add_argument("--deep-lr", type=float, default=DeepConfig.lr,
                   help=f"the deep phase's peak learning rate (default {DeepConfig.lr})")
    t.add_argument("--deep-select-on-views", action="store_true",
                   help="the deep phase early-stops on the mean of the clean validation loss and the loss on one "
                        "fixed recipe view of each validation image (default: the clean loss alone)")
    t.add_argument("--deep-first-block", type=int, default=DeepConfig.first_block,
                   help="the deep phase trains MobileNetV2 from this block up (default 0: every layer but BatchNorm)")
    t.add_argument("--deep-consistency", type=float, default=DeepConfig.consistency, metavar="WEIGHT",
                   help="the deep phase shows every image in two colour views a step and adds WEIGHT times the "
                        "Jensen-Shannon divergence of their predictions to the loss (AugMix uses 12; default 0: off)")
    t.add_argument("--deep-kaggle-per-epoch", type=int, default=DeepConfig.kaggle_per_epoch,
                   help="Kaggle training images drawn per deep epoch, of ~8,000 copies of ~280 cells "
                        f"(default {DeepConfig.kaggle_per_epoch}; 0: all)")

    lo = sub.add_parser(
        "loso",
        help="leave-one-source-out validation of the training recipe: train on one source, test on the other "
             "(resumable)",
    )
    lo.add_argument("--data", help=DATA_HELP)
    lo.add_argument(
        "--work",
        default=".cache/loso",
        help="working directory; rerun with the same one to resume (default: .cache/loso)",
    )
    lo.add_argument(
        "--cache", default=".cache/features", help="feature cache shared with training runs (default: .cache/features)"
    )
    lo.add_argument(
        "--variants",
        default="baseline,robust",
        help="comma-separated: baseline (no robustness measures), robust, strong, strong_norm, strong_cell (see "
             "docs/generalisation.md)",
    )
    lo.add_argument("--max-epochs", type=int, default=14)
    lo.add_argument(
        "--views",
        help="augmented views per training image and source, e.g. kaggle=2,pbc=4 (as the trained model's)",
    )
    lo.add_argument("--input-size", type=int, default=192)
    lo.add_argument(
        "--limit-per-class", type=int, default=0, help="use at most N images per source, split and class (smoke runs)"
    )
    lo.add_argument(
        "--adaptation",
        default="5,10,20,50",
        help="labeled images per class for the adaptation curve on the last variant's models ('' to skip)",
    )
    lo.add_argument("--draws", type=int, default=3, help="draws of labeled images per point of the adaptation curve")
    lo.add_argument(
        "--seed",
        type=int,
        help="training seed (default: the recipe's); with another --work, repeats measure run-to-run noise",
    )
    lo.add_argument(
        "--record", metavar="MODEL_DIR", help="write the results into this model's evaluation.json and model card"
    )

    a = sub.add_parser(
        "adapt",
        help="adapt a model to your laboratory from labeled images; saved as a new model version, never over the "
             "original",
    )
    a.add_argument(
        "path",
        nargs="?",
        help="a folder of class folders or a .zip of them (e.g. eosinophil/*.jpg, lymphocyte/*.jpg, ...)",
    )
    a.add_argument(
        "--from-reviews",
        action="store_true",
        help="use the review queue's confirmed and reclassified images (see --review-db) instead of PATH",
    )
    a.add_argument(
        "--review-db", help="review database (default: $HEMATOVISION_REVIEW_DB or <user data dir>/reviews.sqlite3)"
    )
    a.add_argument("--name", required=True, help="name of the new model version (letters, digits, '.', '_', '-')")
    a.add_argument("--model", help="model to adapt (default: $HEMATOVISION_MODEL or the shipped models/)")
    a.add_argument(
        "--out", help="folder for the new version (default: <user data dir>/models/<name>, listed by the dashboard)"
    )
    a.add_argument("--views", type=int, default=AdaptConfig.views,
                   help=f"views per labeled image, the first clean (default {AdaptConfig.views})")
    a.add_argument("--data", help=DATA_HELP + "; the parent's training images, to refit the unfamiliar-cell check")
    a.add_argument("--no-refit", action="store_true",
                   help="do not refit the unfamiliar-cell check for the new version (run fit-trust on it later)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")

    x = sub.add_parser(
        "export-litert",
        help="export model.keras to model.tflite (LiteRT) for fast serving, check it and record it in the card",
    )
    x.add_argument("--model", help=MODEL_HELP)
    x.add_argument(
        "--data",
        help="data root for check images (default: $HEMATOVISION_DATA or ../shared/data; generated images if absent)",
    )
    x.add_argument(
        "--check-images", type=int, default=16, help="real test images per test set to compare Keras and LiteRT on"
    )

    ss = sub.add_parser(
        "stain-suite",
        help="accuracy and per-class recall of a model under severe stain and camera shifts of the test images "
             "(the validation that predicts other laboratories; docs/generalisation.md)",
    )
    ss.add_argument(
        "--model",
        action="append",
        required=True,
        help="model directory (repeat to compare; the first one's split manifest picks the images)",
    )
    ss.add_argument("--data", help=DATA_HELP)
    ss.add_argument("--kaggle-stride", type=int, default=0, help="use every N-th Kaggle TEST image (default: 6)")
    ss.add_argument("--split", choices=shift_suite.SPLITS, default="test",
                    help="shift the test sets (default; the recorded figures) or the validation split (to choose a "
                         "recipe without reading a test set)")
    ss.add_argument("--out", help="write the reports (a JSON list, one per model) here")
    ss.add_argument("--record", action="store_true", help="write each report into its model's evaluation.json and card")

    r = sub.add_parser(
        "report",
        help="the differential report of classify results as a PDF (sample, differential, review status, cell gallery)",
    )
    r.add_argument(
        "results", metavar="RESULTS.csv", help="a CSV written by 'classify' (or downloaded from the Classify page)"
    )
    r.add_argument("--out", required=True, help="PDF file to write")
    r.add_argument("--sample-id", default="", help="the sample's identifier, printed on every page")
    r.add_argument("--operator", default="", help="who produced the report")
    r.add_argument(
        "--review-db",
        help="apply the review decisions of this database, as the Classify page does "
        "(default: $HEMATOVISION_REVIEW_DB or <user data dir>/reviews.sqlite3 when it exists)",
    )

    f = sub.add_parser(
        "fields",
        help="find which Kaggle images are copies of one smear field (the unit the validation split keeps whole) and "
             "write or check the field table",
    )
    f.add_argument("--data", help=DATA_HELP)
    f.add_argument("--out", help="field table to write (default: the committed hematovision/kaggle_fields.csv)")
    f.add_argument(
        "--check",
        action="store_true",
        help="rebuild and compare with the committed table instead of writing; exit 1 if they differ",
    )
    f.add_argument("--workers", type=int, default=2, help="processes (one class folder each; default 2)")
    return p


def _ray_arguments(c: argparse.ArgumentParser) -> None:
    g = c.add_argument_group("Ray Data engine (optional: pip install -r requirements-ray.txt; README: on a cluster)")
    g.add_argument(
        "--engine", choices=("default", "ray"), default="default",
        help="'ray': decode in Ray tasks and infer in an actor pool, on a local or joined Ray cluster; same rows",
    )
    g.add_argument("--address", help="join this Ray cluster (e.g. auto, HOST:6379); default: start a local one")
    g.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all of this machine's)")
    g.add_argument("--workers", type=int, help="inference actors (default: half the cluster's CPUs, at least 1)")
    g.add_argument(
        "--resume", action="store_true",
        help="keep the rows already in --out and classify only the inputs it lacks (after an interrupted run)",
    )


def _classify_ray(args, out_path: Path | None, summary_path: Path | None) -> int:
    """``classify --engine ray``: the same rows as the default engine, into a CSV or a Parquet dataset."""
    if importlib.util.find_spec("ray") is None:
        raise UsageError("--engine ray needs Ray: pip install -r requirements-ray.txt")
    if args.fields:
        raise UsageError("--fields runs on the default engine only")
    if out_path is None or _is_stream(out_path):
        raise UsageError("--engine ray writes to a file: give --out FILE.csv or FILE.parquet")
    for name in ("num_cpus", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    try:
        card = persistence.load_card(model_dir(args.model))
    except persistence.ModelError as exc:
        raise UsageError(str(exc)) from None
    threshold = round_threshold(card.default_threshold) if args.threshold is None else args.threshold
    options = ray_engine.RayOptions(args.address, args.num_cpus, args.workers, batch_size=args.batch_size)
    trust = unfamiliar.load(model_dir(args.model), card.model_sha256)  # numpy only: the batch verdict's baseline
    summary = RunSummary("images", card.version, threshold, list(card.classes),
                         expected_unfamiliar=None if trust is None else trust.expected_share,
                         reference_scores=None if trust is None else trust.val_scores,
                         reference_sources=None if trust is None else trust.val_sources)
    try:
        ray_engine.connect(options)  # before the output is touched: a cluster that cannot be had changes nothing
        writer = ResultsWriter(out_path, card.classes, threshold, card.version, resume=args.resume)
    except (ResultsFileError, ray_engine.RayEngineError) as exc:
        raise UsageError(str(exc)) from None
    bar = tqdm(desc="classify (ray)", unit="img", disable=args.quiet or None, file=sys.stderr)
    with writer:
        preds = ray_engine.classify(
            args.paths, args.model, threshold, options, skip=writer.done, progress=lambda k: bar.update(1),
            listed=lambda n: setattr(bar, "total", n),
        )
        try:
            for p in preds:
                writer.write(p)
                summary.add_image(p)
        except ray_engine.RayEngineError as exc:
            raise UsageError(str(exc)) from None
    bar.close()
    if args.batch_hold and summary.hold():  # this run's images decide (with --resume too), as for the summary
        hold_results(out_path)
    if summary_path is not None:
        summary_path.write_text(summary.to_json())
    kept = f" ({writer.kept} already there)" if args.resume else ""
    print(
        f"{summary.inputs} images classified on Ray{kept}: {summary.classified} classified "
        f"({summary.flagged - summary.held} flagged below {threshold:.3f}), {summary.errors} errors -> {args.out}",
        file=sys.stderr,
    )
    _print_verdict(summary, trust is not None or summary_path is not None)  # as the default engine
    return 0


def cmd_fields(args) -> int:
    root = data_root(args.data)
    if not root.is_dir():
        raise UsageError(f"data root not found: {root} (set --data or $HEMATOVISION_DATA)")
    rows = fields.build_table(root, workers=args.workers)
    if not rows:
        raise UsageError(f"no Kaggle images under {root}")
    images: Counter = Counter()
    field_sets: dict[tuple[str, str], set[str]] = {}
    for rel, field in rows:
        key = tuple(rel.split("/")[-3:-1])  # (split folder, class folder)
        images[key] += 1
        field_sets.setdefault(key, set()).add(field)
    for folder, label in sorted(images):
        print(f"{folder}/{label}: {images[folder, label]} images, {len(field_sets[folder, label])} fields")
    if args.check:
        committed = fields.read_table(fields.TABLE)
        diff = sorted(r for r in set(rows) ^ set(committed.items()))
        if diff:
            print(f"the field table differs from {fields.TABLE} in {len(diff)} rows, e.g. {diff[:3]}", file=sys.stderr)
            return 1
        print(f"matches {fields.TABLE} ({len(rows)} images)")
        return 0
    out = Path(args.out) if args.out else fields.TABLE
    fields.write_table(rows, out)
    print(f"written {out} ({len(rows)} images)")
    return 0


def cmd_report(args) -> int:
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"folder for --out does not exist: {out.parent}")
    dbp = db_path(args.review_db)
    if args.review_db and not dbp.is_file():
        raise UsageError(f"no review database at {dbp}")
    try:
        store = ReviewStore(dbp) if dbp.is_file() else None
        reviews = report_reviews(store) if store is not None else None
        content = report_from_csv(args.results, sample_id=args.sample_id, operator=args.operator, reviews=reviews)
        render_pdf(content, out)
    except (ReportInputError, ReviewDBError) as exc:
        raise UsageError(str(exc)) from None
    except sqlite3.Error as exc:
        raise UsageError(f"cannot read the review database {dbp}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    pages = f"{content.total_cells} white cells, {content.status.headline}"
    missing = f"; {content.n_images_missing} cell image(s) not available" if content.n_images_missing else ""
    print(f"{args.results}: {pages}{missing} -> {out}", file=sys.stderr)
    return 0


def cmd_export_litert(args) -> int:
    mdir = model_dir(args.model)
    try:
        persistence.load_card(mdir)
        images, desc = check_images(args.data, per_set=max(1, args.check_images), model_dir=mdir)
        rec = export_litert(mdir, images, desc)
    except persistence.ModelError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"written {mdir / rec['file']} (sha256 {rec['sha256'][:12]}, input {rec['input_shape']}); "
        f"max abs difference from Keras {rec['max_abs_diff']:.2e} on {rec['check_images']} (tolerance "
        f"{rec['tolerance']:.0e}); card updated"
    )
    return 0


def cmd_classify(args) -> int:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be between 0 and 1 (got {args.threshold})")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    out_path = None if args.out == "-" else Path(args.out)
    if out_path is not None and out_path.parent and not out_path.parent.exists():
        raise UsageError(f"folder for --out does not exist: {out_path.parent}")
    summary_path = Path(args.summary) if args.summary else None
    if summary_path is not None and summary_path.parent and not summary_path.parent.exists():
        raise UsageError(f"folder for --summary does not exist: {summary_path.parent}")
    if args.engine == "ray":
        return _classify_ray(args, out_path, summary_path)
    if args.resume or args.address or args.num_cpus or args.workers:
        raise UsageError("--resume, --address, --num-cpus and --workers go with --engine ray")
    try:
        clf = Classifier.load(args.model, batch_size=args.batch_size)
    except persistence.ModelError as exc:
        raise UsageError(str(exc)) from None
    threshold = clf.default_threshold if args.threshold is None else args.threshold
    if args.fields:
        return _classify_fields(args, clf, threshold, out_path, summary_path)
    summary = RunSummary(
        "images", clf.version, float(threshold), list(clf.classes_), expected_unfamiliar=_expected(clf),
        reference_scores=None if clf.trust is None else clf.trust.val_scores,
        reference_sources=None if clf.trust is None else clf.trust.val_sources,
    )
    fh = _open_rows(out_path, buffered=args.batch_hold)
    try:
        w = csv.writer(fh)
        w.writerow(result_columns(clf.classes_))
        bar = tqdm(desc="classify", unit="img", disable=args.quiet or None, file=sys.stderr)
        for p in clf.classify(iter_paths(args.paths), threshold, progress=lambda k: bar.update(1)):
            w.writerow([neutralise(v) for v in image_row(p, clf.classes_, threshold, clf.version)])
            summary.add_image(p)
        bar.close()
    except BaseException:  # interrupted: the rows so far, as they were written
        _close_rows(fh, out_path, None)
        raise
    _close_rows(fh, out_path, summary if args.batch_hold else None)
    if summary_path is not None:
        summary_path.write_text(summary.to_json())
    why = f"below {threshold:.3f}" + (f" or unfamiliar: {summary.unfamiliar} unfamiliar" if clf.trust else "")
    print(
        f"{summary.inputs} images: {summary.classified} classified ({summary.flagged - summary.held} flagged {why}), "
        f"{summary.errors} errors -> {args.out}",
        file=sys.stderr,
    )
    _print_verdict(summary, clf.trust is not None or summary_path is not None)
    return 0


def _open_rows(out_path: Path | None, buffered: bool):
    """Where the CSV rows go as they come: ``out_path``, or standard output. With the batch hold on, rows for a
    stream (standard output, ``/dev/stdout``, a pipe) wait in a temporary file (in memory up to 8 MB), since the
    hold may change them at the end; a regular file is written as they come and rewritten if held. A stream is
    opened for appending (``>>`` redirects stay whole)."""
    if out_path is not None and not _is_stream(out_path):
        return open(out_path, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed by _close_rows)
    if buffered:
        return tempfile.SpooledTemporaryFile(max_size=1 << 23, mode="w+", newline="", encoding="utf-8")
    return sys.stdout if out_path is None else open(out_path, "a", newline="", encoding="utf-8")  # noqa: SIM115


def _is_stream(path: Path) -> bool:
    """A path to write once and never read back or replace: ``/dev/stdout`` and the like, a pipe, a device."""
    return str(path.absolute()).startswith(("/dev/", "/proc/")) or (path.exists() and not path.is_file())


def _close_rows(fh, out_path: Path | None, summary: RunSummary | None) -> None:
    """Finish the rows of :func:`_open_rows`: with a ``summary`` (the batch hold on), apply the hold when the batch
    is called shifted (:meth:`RunSummary.hold`); then close the file, or copy the waiting rows to their stream
    (also after an interruption, unchanged)."""
    changed = summary is not None and summary.hold() > 0
    if isinstance(fh, tempfile.SpooledTemporaryFile):
        fh.seek(0)
        dst = sys.stdout if out_path is None else open(out_path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        try:
            (hold_csv if changed else shutil.copyfileobj)(fh, dst)
        finally:
            fh.close()
            if dst is not sys.stdout:
                dst.close()
    elif fh is not sys.stdout:
        fh.close()
        if changed:
            hold_results(out_path)


def _print_verdict(summary: RunSummary, checked: bool) -> None:
    """The batch verdict (or why there is none) on standard error, and what the batch hold did."""
    if checked:
        print(summary.domain_shift().message, file=sys.stderr)
    if summary.batch_held:
        print(
            f"Batch held for review: every classified image is flagged, {summary.held} of them only because of the "
            "batch (flag_reason batch_shift), as a failed quality control holds an analyzer's results. Review a "
            "sample and adapt the model to this laboratory; --no-batch-hold keeps confident predictions accepted.",
            file=sys.stderr,
        )


def _expected(clf: Classifier) -> float | None:
    """The model's in-domain unfamiliar share, or ``None`` without trust statistics."""
    return None if clf.trust is None else clf.trust.expected_share


def _classify_fields(args, clf, threshold: float, out_path: Path | None, summary_path: Path | None) -> int:
    """``classify --fields``: one CSV row per white cell found (a row with a note for a field without one)."""
    summary = RunSummary(
        "cells", clf.version, float(threshold), list(clf.classes_), expected_unfamiliar=_expected(clf),
        reference_scores=None if clf.trust is None else clf.trust.val_scores,
        reference_sources=None if clf.trust is None else clf.trust.val_sources,
    )
    fh = _open_rows(out_path, buffered=args.batch_hold)
    try:
        w = csv.writer(fh)
        w.writerow(field_columns(clf.classes_))
        bar = tqdm(desc="classify fields", unit="field", disable=args.quiet or None, file=sys.stderr)
        for r in classify_fields(clf, iter_paths(args.paths), threshold, progress=lambda k: bar.update(1)):
            for i in range(len(r.cells)) if r.cells else [None]:
                w.writerow([neutralise(v) for v in csv_row(r, i, clf.classes_, threshold, clf.version)])
            summary.add_field(r)
        bar.close()
    except BaseException:  # interrupted: the rows so far, as they were written
        _close_rows(fh, out_path, None)
        raise
    _close_rows(fh, out_path, summary if args.batch_hold else None)
    if summary_path is not None:
        summary_path.write_text(summary.to_json())
    print(
        f"{summary.inputs} fields: {summary.classified} white cells ({summary.flagged - summary.held} flagged below "
        f"{threshold:.3f}), {summary.fields_without_cells} without a white cell, {summary.errors} errors -> {args.out}",
        file=sys.stderr,
    )
    _print_verdict(summary, clf.trust is not None or summary_path is not None)
    return 0


def cmd_fit_trust(args) -> int:
    mdir = model_dir(args.model)
    if args.bank < 10 or args.measure < 0:
        raise UsageError("--bank must be at least 10 and --measure not negative")
    bars: dict = {}

    def progress(name: str, done: int, total: int) -> None:
        bar = bars.get(name) or bars.setdefault(
            name, tqdm(total=total, desc=name, unit="img", file=sys.stderr, mininterval=5)
        )
        bar.update(done - bar.n)

    logging.basicConfig(level=logging.WARNING)
    try:
        res = fit_model_dir(mdir, args.data, bank_size=args.bank, measure_size=args.measure, progress=progress)
    except persistence.ModelError as exc:
        raise UsageError(str(exc)) from None
    finally:
        for bar in bars.values():
            bar.close()
    if res.exported:
        print(res.exported)
    for line in trust_summary_lines(res.record):
        print(line)
    print(
        f"written {res.path}; recorded in {mdir / persistence.CARD_FILE} (training.trust) and "
        f"{persistence.EVALUATION_FILE} (trust)"
    )
    return 0


def cmd_evaluate(args) -> int:
    mdir = model_dir(args.model)
    try:
        persistence.load_card(mdir)
    except persistence.ModelError as exc:
        raise UsageError(str(exc)) from None
    if args.path is None:
        report = evaluate_model_on_test_sets(mdir, args.data)
        if not report["sets"]:
            raise UsageError("no test images found under the data root: set --data or $HEMATOVISION_DATA")
        for line in summary_lines(report):
            print(line)
        print(f"written: {mdir / persistence.EVALUATION_FILE}, {mdir / persistence.PREDICTIONS_FILE}")
        return 0

    path = Path(args.path)
    clf = Classifier.load(mdir)
    try:
        labeled = labeled_from_path(path, clf.classes_)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if not labeled.inputs:
        raise UsageError(f"no labeled images in {path}: expected class folders named {', '.join(clf.classes_)}")
    with tqdm(total=len(labeled.inputs), desc="evaluate", file=sys.stderr) as bar:
        report, frame = evaluate_labeled(clf, labeled, path.name, progress=lambda k: bar.update(k - bar.n))
    report["model_version"] = clf.version
    for line in summary_lines({"sets": {"user": report}}):
        print(line)
    for name, why in report.get("skipped", []):
        print(f"skipped: {name}: {why}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    if args.predictions:
        frame.to_csv(args.predictions, index=False, float_format="%.6f")
    return 0


def _views(text: str | None, default: dict) -> dict:
    """``--views kaggle=2,pbc=4`` over the default views per image and source."""
    if not text:
        return default
    try:
        return {**default, **{k.strip(): int(v) for k, v in (p.split("=") for p in text.split(","))}}
    except ValueError as exc:
        raise UsageError(f"--views: expected SOURCE=N,... (e.g. kaggle=2,pbc=4), got {text!r}") from exc


def cmd_train(args) -> int:
    root = data_root(args.data)
    if not root.is_dir():
        raise UsageError(f"data root not found: {root} (set --data or $HEMATOVISION_DATA)")
    out = Path(args.out)
    work = Path(args.work) if args.work else Path(".cache") / f"train-{out.name}"
    cfg = TrainConfig(
        input_size=args.input_size,
        max_epochs=args.max_epochs,
        first_trainable_block=args.first_trainable_block,
        limit_per_split=args.limit_per_class,
        sources=tuple(s.strip() for s in args.sources.split(",") if s.strip()),
    )
    cfg.input_norm = args.input_norm
    cfg.framing = args.framing
    cfg.patience = args.patience
    cfg.lr_finetune = args.lr_finetune
    if args.augment:
        cfg.augment = AUGMENT_RECIPES[args.augment]()
    cfg.views_per_image = _views(args.views, cfg.views_per_image)
    cfg.mild_views = _views(args.mild_views, {}) if args.mild_views else {}
    cfg.mild_share = args.mild_share
    cfg.average_from = args.average_from
    cfg.view_order = args.view_order
    cfg.fit_seed = args.fit_seed
    cfg.extra_views = _views(args.extra_views, {}) if args.extra_views else {}
    try:
        cfg.exclude_classes = check_exclude_classes(args.exclude_classes.split(","))
    except ValueError as exc:
        raise UsageError(f"--exclude-classes: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    refit_from = Path(args.refit_from) if args.refit_from else None
    deep = fitter = None
    if args.deep_from:
        if refit_from is not None or args.refit:
            raise UsageError("--deep-from starts from a trained model; it does not combine with --refit/--refit-from")
        if not (Path(args.deep_from) / persistence.CARD_FILE).is_file():
            raise UsageError(f"--deep-from: no model card in {args.deep_from}")
        deep = DeepConfig(init_from=str(args.deep_from), lr=args.deep_lr, max_epochs=args.max_epochs,
                          patience=args.patience, kaggle_per_epoch=args.deep_kaggle_per_epoch,
                          select_on_views=args.deep_select_on_views, first_block=args.deep_first_block,
                          consistency=args.deep_consistency)
        fitter = functools.partial(deep_fit, deep=deep)
    if refit_from is not None:
        if not (refit_from / persistence.CARD_FILE).is_file():
            raise UsageError(f"--refit-from: no model card in {refit_from}")
        try:
            refit_config(refit_from, cfg)
        except ValueError as exc:
            raise UsageError(f"--refit-from: {exc}") from exc
    recipe.train_command(
        out,
        work,
        cfg,
        root,
        evaluate=not args.no_evaluate,
        cache_root=Path(args.cache),
        name=args.name,
        refit_from=refit_from,
        refit=args.refit,
        fitter=fitter,
    )
    if deep is not None:  # which model the deep phase started from, by version: its folder may change later
        deep_phase = {**asdict(deep), "init_version": persistence.load_card(args.deep_from).version}
        persistence.update_card(out, lambda c: c.training.__setitem__("deep_phase", deep_phase))

    command = "python -m hematovision " + shlex.join(args.argv)
    persistence.update_card(out, lambda c: c.training.__setitem__("command", command))
    if args.loso:
        results = loso.run_loso(
            work / "loso", cfg, root, cache_root=Path(args.cache), variants=("baseline", "strong_cell")
        )
        loso.record_in_model(out, loso.summary(results, cfg))
        print(loso.table(results))
    return 0


def cmd_adapt(args) -> int:
    t0 = time.time()
    base = model_dir(args.model)
    try:
        card = persistence.load_card(base)
    except persistence.ModelError as exc:
        raise UsageError(str(exc)) from None
    if args.from_reviews == bool(args.path):
        raise UsageError("give either PATH (a folder or zip of class folders) or --from-reviews")
    if args.from_reviews:
        dbp = db_path(args.review_db)
        if not dbp.is_file():
            raise UsageError(f"no review database at {dbp}: review some images first, or pass --review-db")
        try:
            labeled, source = labeled_from_reviews(ReviewStore(dbp), card.classes), f"review decisions in {dbp}"
        except ReviewDBError as exc:
            raise UsageError(str(exc)) from None
    else:
        source = args.path
        try:
            labeled = labeled_from_path(Path(args.path), card.classes)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
    logging.basicConfig(level=logging.WARNING)
    bar = tqdm(total=len(labeled.inputs), desc="adapt", unit="img", disable=args.quiet, file=sys.stderr)
    try:
        res = adapt_labeled(
            base,
            labeled,
            args.name,
            Path(args.out) if args.out else None,
            AdaptConfig(views=args.views),
            source=source,
            progress=lambda k, n: bar.update(k - bar.n),
        )
    except (ValueError, FileExistsError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        bar.close()
    for name, reason in res.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    print(
        f"{res.version}: adapted from {res.parent} on {sum(res.counts.values())} images {res.counts}; "
        f"cross-fitted accuracy {res.crossfit_accuracy:.1%}, temperature {res.temperature:.3f}, threshold "
        f"{res.threshold:.3f}, "
        f"{res.seconds:.0f} s -> {res.path}"
    )
    if res.note:
        print(f"note: {res.note}", file=sys.stderr)
    if not args.no_refit:  # a separate step, timed apart: the version is saved whatever it gives
        if not args.quiet:
            print("refitting the unfamiliar-cell check for the new version ...", file=sys.stderr)
        refit = refit_version(res.path, args.data, network=res.network)
        res.network = None
        print(refit.message, file=sys.stdout if refit.fitted else sys.stderr)
    print(f"adapt: {time.time() - t0:.0f} s in all")
    return 0


def cmd_loso(args) -> int:
    root = data_root(args.data)
    if not root.is_dir():
        raise UsageError(f"data root not found: {root} (set --data or $HEMATOVISION_DATA)")
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in loso.VARIANTS]
    if unknown or not variants:
        raise UsageError(f"unknown variant(s) {unknown}: choose from {', '.join(loso.VARIANTS)}")
    if args.record and not (Path(args.record) / "model_card.json").is_file():
        raise UsageError(f"--record: no model card in {args.record}")
    cfg = TrainConfig(input_size=args.input_size, max_epochs=args.max_epochs, limit_per_split=args.limit_per_class)
    if args.seed is not None:
        cfg.seed = args.seed
    cfg.views_per_image = _views(args.views, cfg.views_per_image)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = loso.run_loso(Path(args.work), cfg, root, cache_root=Path(args.cache), variants=variants)
    print(loso.table(results))
    points = None
    if args.adaptation.strip():
        ns = tuple(int(v) for v in args.adaptation.split(",") if v.strip())
        points = loso.adaptation_curve(results, cfg, root, per_class=ns, draws=args.draws, variant=variants[-1])
        print()
        print(loso.adaptation_table(points))
        (Path(args.work) / "adaptation.json").write_text(json.dumps([asdict(p) for p in points], indent=1) + "\n")
    if args.record:
        loso.record_in_model(Path(args.record), loso.summary(results, cfg, points, variants[-1] if points else ""))
    return 0


def cmd_stain_suite(args) -> int:
    root = data_root(args.data)
    if not root.is_dir():
        raise UsageError(f"data root not found: {root} (set --data or $HEMATOVISION_DATA)")
    stride = args.kaggle_stride or shift_suite.KAGGLE_STRIDE
    if args.record and args.split != "test":
        raise UsageError("--record writes the test-set figures; run it without --split val")
    reports = [shift_suite.run_suite(Path(m), root, stride, manifest_from=Path(args.model[0]), split=args.split)
               for m in args.model]
    print(shift_suite.table(reports))
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=1) + "\n")
    if args.record:
        for m, r in zip(args.model, reports):
            shift_suite.record_in_model(Path(m), r)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in what a command writes (the model card)
    try:
        return {
            "classify": cmd_classify,
            "evaluate": cmd_evaluate,
            "train": cmd_train,
            "loso": cmd_loso,
            "adapt": cmd_adapt,
            "export-litert": cmd_export_litert,
            "fields": cmd_fields,
            "stain-suite": cmd_stain_suite,
            "report": cmd_report,
            "fit-trust": cmd_fit_trust,
        }[args.command](args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
