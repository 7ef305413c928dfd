"""Model versions: the shipped model, and the lab-adapted versions saved beside it.

The shipped model lives in the repository (``models/``); adapted versions are a
lab's own and live in the per-user data directory
(``config.user_data_dir() / "models" / <name>``), one folder each, never
overwritten. The dashboard and the CLI list them from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..config import model_dir, user_data_dir
from . import persistence

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelVersion:
    path: Path
    name: str
    version: str  # name@sha256-prefix, as recorded with every prediction
    parent: str  # "" for the shipped model
    created: str
    shipped: bool

    @property
    def label(self) -> str:
        kind = "shipped" if self.shipped else f"adapted from {self.parent}"
        return f"{self.version} ({kind})"


def adapted_root(home: Path | None = None) -> Path:
    return Path(home or user_data_dir()) / "models"


def check_name(name: str) -> str:
    """A version name that is safe as a folder name; raises ValueError with the rule otherwise."""
    if not _NAME.match(name or ""):
        raise ValueError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def new_version_dir(name: str, home: Path | None = None) -> Path:
    """Where an adapted version named ``name`` goes; refuses a name already taken."""
    path = adapted_root(home) / check_name(name)
    if path.exists():
        raise FileExistsError(f"a model version named {name!r} already exists ({path}); choose another name")
    return path


def _version(path: Path, shipped: bool) -> ModelVersion | None:
    try:
        card = persistence.load_card(path)
    except persistence.ModelError:
        return None
    return ModelVersion(path, card.name, card.version, card.parent, card.created, shipped)


def list_versions(shipped_dir: Path | None = None, home: Path | None = None) -> list[ModelVersion]:
    """The shipped model first, then adapted versions, newest first. Unreadable folders are left out."""
    out = []
    shipped = _version(Path(shipped_dir or model_dir()), True)
    if shipped:
        out.append(shipped)
    root = adapted_root(home)
    adapted = (
        [
            v
            for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.endswith(".partial") and (v := _version(p, False))
        ]
        if root.is_dir()
        else []
    )
    return out + sorted(adapted, key=lambda v: v.created, reverse=True)
