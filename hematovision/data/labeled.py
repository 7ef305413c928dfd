"""Labeled images from a user: a folder or zip of class folders, or images plus a labels CSV.

What evaluation (:mod:`hematovision.evaluation`) and adaptation (:mod:`hematovision.training.adapt`)
read. Inputs come through :mod:`hematovision.imaging.sources`, so the limits and checks of the
classify path apply; a file that cannot be labeled is listed with its reason, never fatal.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..imaging.sources import ImageInput, display_name, from_bytes, iter_zip
from .layout import iter_class_folders, normalise_label


@dataclass
class LabeledInputs:
    """Images with true labels, and the ones that could not be labeled (never fatal)."""

    inputs: list[ImageInput] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def labeled_from_folder(path: Path, classes: list[str]) -> LabeledInputs:
    """A folder of class folders (``root/<class>/**/image``)."""
    out = LabeledInputs()
    for label, folder, f in iter_class_folders(Path(path)):
        name = f.relative_to(path).as_posix()
        if label is None or label not in classes:
            out.skipped.append((name, f"unknown class folder '{folder}' (known: {', '.join(classes)})"))
            continue
        out.inputs.append(ImageInput(name, (lambda p=f: p.read_bytes())))
        out.labels.append(label)
        out.groups.append(name)
    return out


def labeled_from_path(path: Path, classes: list[str]) -> LabeledInputs:
    """A folder of class folders, or a zip of them; FileNotFoundError when it is neither."""
    path = Path(path)
    if path.is_dir():
        return labeled_from_folder(path, classes)
    if path.is_file():
        return labeled_from_zip(path.name, path.read_bytes(), classes)
    raise FileNotFoundError(f"no such folder or zip: {path}")


def labeled_from_zip(name: str, data: bytes, classes: list[str]) -> LabeledInputs:
    """A zip of class folders: the folder holding each image names its class.

    Members come through :func:`sources.iter_zip`, so the archive limits and
    member checks of the classify path apply here too; a member's input name
    is its path inside the archive.
    """
    out = LabeledInputs()
    prefix = display_name(name) + "/"
    for item in iter_zip(name, data):
        if not item.name.startswith(prefix):  # the archive itself is unusable
            out.skipped.append((name, item.error))
            continue
        member = item.name[len(prefix):]
        parts = member.split("/")
        label = normalise_label(parts[-2], classes) if len(parts) >= 2 else None
        if label is None:
            where = parts[-2] if len(parts) >= 2 else "(no folder)"
            out.skipped.append((member, f"unknown class folder '{where}' (known: {', '.join(classes)})"))
        elif item.error:
            out.skipped.append((member, item.error))
        else:
            out.inputs.append(ImageInput(member, item.read))
            out.labels.append(label)
            out.groups.append(member)
    return out


def labeled_from_csv(images: list[tuple[str, bytes]], labels_csv: bytes, classes: list[str]) -> LabeledInputs:
    """Uploaded images plus a CSV with columns ``file`` and ``label`` (or ``class``)."""
    out = LabeledInputs()
    try:
        table = pd.read_csv(io.BytesIO(labels_csv), dtype=str)
    except Exception as exc:
        out.skipped.append(("labels.csv", f"unreadable CSV ({type(exc).__name__})"))
        return out
    cols = {c.lower().strip(): c for c in table.columns}
    fcol, lcol = cols.get("file") or cols.get("filename"), cols.get("label") or cols.get("class")
    if not fcol or not lcol:
        out.skipped.append(("labels.csv", "the CSV needs columns 'file' and 'label'"))
        return out
    by_name = {Path(str(r[fcol])).name: str(r[lcol]) for _, r in table.iterrows()}
    for name, data in images:
        raw = by_name.get(Path(name).name)
        label = normalise_label(raw, classes) if raw else None
        if label is None:
            out.skipped.append((name, "no label in the CSV" if raw is None else f"unknown class '{raw}'"))
            continue
        out.inputs.append(from_bytes(name, data))
        out.labels.append(label)
        out.groups.append(name)
    return out
