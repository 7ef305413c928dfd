"""Where things live: the data root, the shipped model, the ImageNet weights.

Everything that reads ``../shared`` goes through :func:`data_root` so the
location is set in one place (``HEMATOVISION_DATA`` or a ``--data`` flag).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The four classes the project was specified with, in model output order.
#: Serving never reads this: it reads the class list saved beside the model.
TRAINING_CLASSES: tuple[str, ...] = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "models"
DATA_ENV = "HEMATOVISION_DATA"
MODEL_ENV = "HEMATOVISION_MODEL"
WEIGHTS_FILENAME = "mobilenet_v2_1.0_no_top.weights.h5"
WEIGHTS_SHA256 = "6714965a05ee6d8568343664bb9cda7456c6eb1fa190a6f5eb39bf087068b100"


def _location(override: str | os.PathLike | None, env_name: str, default: Path) -> Path:
    """An explicit argument wins, then the environment variable, then the default."""
    chosen = override or os.environ.get(env_name)
    return Path(chosen).expanduser().resolve() if chosen else default


def data_root(override: str | os.PathLike | None = None) -> Path:
    """The data root: explicit argument, then ``$HEMATOVISION_DATA``, then ``../shared/data``."""
    return _location(override, DATA_ENV, (REPO_ROOT.parent / "shared" / "data").resolve())


def weights_path(root: Path | None = None) -> Path:
    """ImageNet MobileNetV2 weights, which sit beside the data root (``../shared/weights``)."""
    root = root or data_root()
    return root.parent / "weights" / WEIGHTS_FILENAME


def model_dir(override: str | os.PathLike | None = None) -> Path:
    """The model to serve: explicit argument, then ``$HEMATOVISION_MODEL``, then the shipped one."""
    return _location(override, MODEL_ENV, DEFAULT_MODEL_DIR)


HOME_ENV = "HEMATOVISION_HOME"


def user_data_dir(override: str | os.PathLike | None = None) -> Path:
    """Per-user state (review decisions, adapted model versions): explicit argument,
    then ``$HEMATOVISION_HOME``, then ``$XDG_DATA_HOME/hematovision`` (``~/.local/share/hematovision``).

    Never inside the repository: what a lab labels and adapts is theirs, not ours to commit.
    """
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return _location(override, HOME_ENV, Path(xdg).expanduser() / "hematovision")
