"""Which Kaggle images are copies of one smear field: the unit a split must keep whole.

Why: every Kaggle ``dataset2-master`` image is an augmented copy (rotation, flip,
shift) of one original white cell in its smear field. The file name
``_N_XXXX.jpeg`` looks as if ``N`` named the original cell, and the first split
was grouped by it; but matching the images shows that ``N`` does not: each of
the four monocyte "cells" 0-3 of ``TEST`` holds copies of all four monocyte
fields, and ``TRAIN``'s groups share fields the same way. Grouping by ``N`` put
copies of one cell on both sides of the train/validation line (validation read
~98% while TEST read ~87%, and a temperature fitted on it made the model
over-confident). So the cell is found from the pixels instead.

How: two images show the same field when a similarity transform (rotation,
scale, shift, optionally after a mirror flip) maps one onto the other: ORB
keypoints matched with Lowe's ratio test, a RANSAC fit with at least
:data:`MIN_INLIERS` inliers, and then the warped image must correlate with the
other (normalised cross-correlation >= :data:`MIN_NCC` over at least
:data:`MIN_OVERLAP` of it). The correlation check is what makes a chance
keypoint match between two fields of look-alike red cells harmless. Fields are
the connected components of that relation (union-find); each image is compared
with up to :data:`REPRESENTATIVES` members of every field found so far, so the
cost is about ``images x fields``, not ``images^2``; then every pair of fields is compared
through a few members each, and fields of fewer than :data:`FRAGMENT` copies
with every image, so a strongly rotated copy
that matched no representative still joins its field.

The result for the shipped data is committed as ``hematovision/kaggle_fields.csv``
(the package folder) (``python -m hematovision fields`` rebuilds or checks it): splitting then
needs no image matching, and anyone can verify the table.
"""

from __future__ import annotations

import csv
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..imaging.decode import read_rgb
from .layout import KAGGLE_DIR, iter_class_folders

#: The committed field table for the Kaggle images under the data root.
TABLE = Path(__file__).resolve().parent.parent / "kaggle_fields.csv"
MIN_INLIERS = 10
MIN_NCC = 0.8
MIN_OVERLAP = 0.3
#: Field members an image is compared with before it is declared a new field.
REPRESENTATIVES = 16
#: Members of each field compared with each other field's when joining pieces of one field.
JOIN_MEMBERS = 6
#: A field with fewer members than this is taken for a fragment of another and compared with every image.
FRAGMENT = 4
_N_FEATURES = 600
_RATIO = 0.75
_RANSAC_PX = 4.0


@dataclass
class FieldImage:
    """What matching needs of one image: grey pixels, where they are real (not black
    rotation fill), and ORB keypoints of the image and of its mirror image."""

    gray: np.ndarray
    valid: np.ndarray
    keypoints: tuple  # ((points, descriptors) as is, (points, descriptors) mirrored)
    colours: np.ndarray  # hue-saturation histogram of the real pixels: which fields to try first


def describe(rgb: np.ndarray) -> FieldImage:
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    # Rotated copies have black corners: keep keypoints off them and their edges.
    valid = cv2.erode((gray > 15).astype(np.uint8), np.ones((9, 9), np.uint8))
    # Blurry copies have little corner contrast: equalise locally and lower FAST's threshold, or
    # they get a handful of keypoints and match nothing.
    detect = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(gray)
    orb = cv2.ORB_create(_N_FEATURES, fastThreshold=8)
    kps = []
    for g, v in ((detect, valid), (np.ascontiguousarray(detect[:, ::-1]), np.ascontiguousarray(valid[:, ::-1]))):
        kp, des = orb.detectAndCompute(g, v * 255)
        kps.append((np.float32([k.pt for k in kp]).reshape(-1, 2), des))
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], valid, [18, 8], [0, 180, 0, 256]).ravel()
    return FieldImage(gray, valid, tuple(kps), np.sqrt(hist / max(hist.sum(), 1.0)))


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-9))


def same_field(a: FieldImage, b: FieldImage) -> bool:
    """Whether ``a``, possibly mirrored, maps onto ``b`` by a similarity transform that makes
    their pixels agree (see the module docstring)."""
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pb, db = b.keypoints[0]
    if db is None or len(pb) < MIN_INLIERS:
        return False
    for mirrored, (pa, da) in enumerate(a.keypoints):
        if da is None or len(pa) < MIN_INLIERS:
            continue
        pairs = [m for m in matcher.knnMatch(da, db, k=2) if len(m) == 2 and m[0].distance < _RATIO * m[1].distance]
        if len(pairs) < MIN_INLIERS:
            continue
        src = pa[[m[0].queryIdx for m in pairs]]
        dst = pb[[m[0].trainIdx for m in pairs]]
        t, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=_RANSAC_PX)
        if t is None or int(inliers.sum()) < MIN_INLIERS:
            continue
        gray, valid = (a.gray[:, ::-1], a.valid[:, ::-1]) if mirrored else (a.gray, a.valid)
        h, w = b.gray.shape
        warped = cv2.warpAffine(np.ascontiguousarray(gray).astype(np.float32), t, (w, h))
        mask = cv2.warpAffine(np.ascontiguousarray(valid), t, (w, h), flags=cv2.INTER_NEAREST).astype(
            bool
        ) & b.valid.astype(bool)
        if mask.mean() >= MIN_OVERLAP and _ncc(warped[mask], b.gray[mask].astype(np.float32)) >= MIN_NCC:
            return True
    return False


def group_fields(images: Sequence[FieldImage], progress: Callable[[int], None] | None = None) -> list[int]:
    """A field index per image (0, 1, ... in order of first appearance).

    Each image is tried against the fields found so far, those of most similar colours first,
    through up to :data:`REPRESENTATIVES` members each, and joins the first that matches; then
    :func:`join_pieces` joins what was found apart.
    """
    colours = np.stack([im.colours for im in images]) if images else np.zeros((0, 1))
    reps: dict[int, list[int]] = {}  # field -> its first REPRESENTATIVES members
    labels: list[int] = []
    for i, img in enumerate(images):
        fields = list(reps)
        order = (
            np.argsort(np.abs(colours[[reps[f][0] for f in fields]] - colours[i]).sum(axis=1), kind="stable")
            if fields
            else []
        )
        for k in order:
            f = fields[k]
            if any(same_field(img, images[j]) for j in reps[f]):
                labels.append(f)
                if len(reps[f]) < REPRESENTATIVES:
                    reps[f].append(i)
                break
        else:
            reps[i] = [i]
            labels.append(i)
        if progress:
            progress(1)
    return join_pieces(images, labels)


def join_pieces(images: Sequence[FieldImage], labels: Sequence[int], per_field: int = JOIN_MEMBERS) -> list[int]:
    """Join fields that are pieces of one: a copy rotated or shifted too far to match a field's
    representatives starts a field of its own, and later copies like it grow it.

    Every pair of fields is compared through up to ``per_field`` members of each; then each
    member of a field of fewer than :data:`FRAGMENT` copies is compared with every image.
    Returns field indices renumbered 0, 1, ... in order of first appearance.
    """
    n = len(images)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[int, int] = {}
    for i, f in enumerate(labels):
        parent[i] = first.setdefault(f, i)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    roots = list(members)
    for a_pos, a in enumerate(roots):
        for b in roots[a_pos + 1 :]:
            if find(a) != find(b) and any(
                same_field(images[x], images[y]) for x in members[a][:per_field] for y in members[b][:per_field]
            ):
                parent[find(a)] = find(b)
    sizes = Counter(find(i) for i in range(n))
    for i in range(n):
        if sizes[find(i)] < FRAGMENT:
            for j in range(n):
                if find(j) != find(i) and same_field(images[i], images[j]):
                    parent[find(i)] = find(j)
                    break
    order: dict[int, int] = {}
    return [order.setdefault(find(i), len(order)) for i in range(n)]


# --------------------------------------------------------------------------- the table


def field_names(relpaths: Sequence[str], indices: Sequence[int]) -> list[str]:
    """Stable field names: each field is named after its first member's file name (sorted by
    path), without the extension, so a rebuilt table names the same field the same way."""
    first: dict[int, str] = {}
    for p, k in sorted(zip(relpaths, indices)):
        first.setdefault(k, p.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    return [first[k] for k in indices]


def read_table(path: Path = TABLE) -> dict[str, str]:
    """``relpath -> field name`` from a field table (empty when there is none)."""
    if not Path(path).is_file():
        return {}
    with open(path, newline="") as f:
        return {r["relpath"]: r["field"] for r in csv.DictReader(f)}


def write_table(rows: Iterable[tuple[str, str]], path: Path = TABLE) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["relpath", "field"])
        w.writerows(sorted(rows))


def _folder_fields(root: Path, files: list[Path]) -> list[tuple[str, str]]:
    cv2.setNumThreads(1)  # one process per folder already uses the cores

    indices = group_fields([describe(read_rgb(f)) for f in files])
    rel = [f.relative_to(root).as_posix() for f in files]
    return list(zip(rel, field_names(rel, indices)))


def build_table(
    root: Path, folders: Sequence[str] = ("TRAIN", "TEST", "TEST_SIMPLE"), workers: int = 2, progress: bool = True
) -> list[tuple[str, str]]:
    """``(relpath, field)`` for every Kaggle image under the data ``root``, matched within each
    class folder (copies of one field never cross a class or a split folder), one process per
    folder. About 25 minutes for the whole set on two cores."""
    jobs: dict[str, list[Path]] = {}
    for folder in folders:
        base = Path(root) / KAGGLE_DIR / folder
        if base.is_dir():
            for label, _, f in iter_class_folders(base):
                if label is not None:
                    jobs.setdefault(f"{folder}/{label}", []).append(f)
    rows: list[tuple[str, str]] = []
    order = sorted(jobs, key=lambda k: -len(jobs[k]))  # largest folders first, so the workers finish together
    with tqdm(total=sum(map(len, jobs.values())), desc="fields", unit="img", disable=not progress) as bar:
        if workers <= 1:
            for k in order:
                rows += _folder_fields(Path(root), jobs[k])
                bar.update(len(jobs[k]))
        else:
            # Spawned, not forked: a fork of a process whose OpenCV or TensorFlow threads hold a lock can hang.
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_folder_fields, Path(root), jobs[k]): k for k in order}
                for fut in as_completed(futures):
                    rows += fut.result()
                    bar.update(len(jobs[futures[fut]]))
    return sorted(rows)
