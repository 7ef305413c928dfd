"""A model directory on disk: the Keras model and the card that describes it.

Layout of a model directory (the shipped one is ``models/``)::

    model.keras            the network, preprocessing and temperature inside
    model_card.json        the single source of truth for classes, input size,
                           temperature, default threshold, training record
    MODEL_CARD.md          the same, rendered for people
    split_manifest.csv     every data file with its split and content hash
    evaluation.json        metrics per test set (``python -m hematovision evaluate``)
    test_predictions.csv   per-image test predictions, for the evaluation page
    model.tflite           the same network as a LiteRT flat-buffer for fast serving
                           (``python -m hematovision export-litert``; see hematovision/serving/litert.py)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..imaging.framing import FRAMING_REVISION, FRAMINGS
from ..stats import round_threshold
from .network import custom_objects

MODEL_FILE = "model.keras"
LITERT_FILE = "model.tflite"
CARD_FILE = "model_card.json"
CARD_MD = "MODEL_CARD.md"
EVALUATION_FILE = "evaluation.json"
PREDICTIONS_FILE = "test_predictions.csv"
MANIFEST_FILE = "split_manifest.csv"
def preprocessing_text(framing: str = "full", input_norm: str = "none") -> str:
    """What happens to a user's pixels before the network, in words, for the model card."""
    cell = framing in ("cell", "cell_any_stain")
    how = ""
    if framing == "cell_any_stain":
        how = " (B - G; where that finds none, the densest stain over the image's own background)"
    first = (
        f"RGB uint8 pixels -> a square around the located nucleus{how}, side 2x the nucleus box, resized to input_size "
        "(hematovision.imaging.framing, shared by training and serving) -> inside the Keras model: "
        if cell
        else "RGB uint8 pixels, any size -> bilinear resize to input_size x input_size -> "
    )
    norm = {
        "channel": "per image and channel to mean 128, standard deviation 48 (ChannelStandardise) -> ",
        "background": "per image, each channel scaled so the background becomes 230 (BackgroundBalance) -> ",
    }.get(input_norm, "")
    return (
        first
        + norm
        + "x/127.5 - 1 (keras.applications.mobilenet_v2.preprocess_input)"
        + ("" if cell else "; all inside the Keras model")
    )


class ModelError(RuntimeError):
    """A model directory that is missing, incomplete or corrupt; the message says what to do."""


@dataclass
class ModelCard:
    name: str
    classes: list[str]
    input_size: int
    temperature: float
    default_threshold: float
    threshold: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    preprocessing: str = field(default_factory=lambda: preprocessing_text())
    architecture: str = (
        "MobileNetV2 (alpha 1.0, ImageNet init) + global average pool + dropout + dense; temperature-scaled softmax"
    )
    libraries: dict = field(default_factory=dict)
    created: str = ""
    model_sha256: str = ""
    parent: str = ""  # for adapted versions: the model they were fine-tuned from
    intended_use: str = "Research and education only. Not a medical device; not for diagnosis."
    litert: dict = field(default_factory=dict)  # the exported model.tflite: sha256, check against Keras (see litert.py)
    framing: str = (
        "full"  # how the cell is framed before the network (framing.FRAMINGS); cards without it predate framing
    )
    framing_revision: int = 0  # for framing "cell": framing.FRAMING_REVISION the model was trained with

    @property
    def version(self) -> str:
        """Short, content-derived version id: changes whenever the weights change."""
        return f"{self.name}@{self.model_sha256[:12]}" if self.model_sha256 else self.name


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "opencv-python-headless", "scikit-learn", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 ** 2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}){mem}, no GPU, {platform.system()} {platform.release()}"


def load_card(model_dir: Path) -> ModelCard:
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        raise ModelError(f"no model card at {path}: train a model (python -m hematovision train) or pass --model DIR")
    try:
        data = json.loads(path.read_text())
        known = ModelCard.__dataclass_fields__
        card = ModelCard(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError) as exc:
        raise ModelError(f"model card {path} is unreadable ({exc}); restore it from git or retrain") from None

    if card.framing not in FRAMINGS:
        raise ModelError(
            f"model card {path} asks for framing {card.framing!r}, which this version does not know "
            f"({', '.join(FRAMINGS)}); update HematoVision"
        )
    if card.framing in ("cell", "cell_any_stain") and card.framing_revision != FRAMING_REVISION:
        raise ModelError(
            f"model card {path}: the model was trained with cell framing revision {card.framing_revision}, this "
            f"HematoVision frames "
            f"with revision {FRAMING_REVISION}; serving it would feed it differently framed cells: retrain it, or use "
            f"the matching HematoVision"
        )
    return card


def write_card(card: ModelCard, model_dir: Path) -> None:
    model_dir = Path(model_dir)
    (model_dir / CARD_FILE).write_text(json.dumps(asdict(card), indent=2) + "\n")
    (model_dir / CARD_MD).write_text(render_card(card))


def update_card(model_dir: Path, change: Callable[[ModelCard], None]) -> ModelCard:
    card = load_card(model_dir)
    change(card)
    write_card(card, model_dir)
    return card


def save_model(network, card: ModelCard, model_dir: Path) -> ModelCard:
    """Save the network and its card; the card records the model file's sha256."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / MODEL_FILE
    network.save(path)
    card.model_sha256 = sha256_of(path)
    card.libraries = library_versions()
    card.created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    write_card(card, model_dir)
    return card


def load_keras_model(model_dir: Path, card: ModelCard | None = None):
    """Load ``model.keras``, checking it against the card's sha256 first."""
    import keras  # TensorFlow-class library: imported only when a network is used

    model_dir = Path(model_dir)
    card = card or load_card(model_dir)
    path = model_dir / MODEL_FILE
    if not path.is_file():
        raise ModelError(f"no model file at {path}: restore models/ from git or retrain")
    if card.model_sha256 and sha256_of(path) != card.model_sha256:
        raise ModelError(
            f"{path} does not match the sha256 in its model card (corrupt or replaced); restore it from git or retrain"
        )
    try:
        return keras.models.load_model(path, compile=False, custom_objects=custom_objects())
    except Exception as exc:  # keras raises many kinds for a damaged file
        raise ModelError(f"cannot load {path} ({type(exc).__name__}: {exc}); restore it from git or retrain") from None


def _selection_lines(sel: dict | None) -> list[str]:
    """The card's record of how this network was chosen among draws of its command (validation only)."""
    if not sel or not sel.get("candidates"):
        return []
    lines = [
        "### Chosen among draws",
        "",
        f"Rule: {sel.get('rule', '')}. Eligible: {sel.get('eligible', '')}. Score: {sel.get('score', '')}.",
        "",
        "| draw | version | Kaggle val | PBC val | eligible | score |",
        "|---|---|---:|---:|---|---:|",
    ]
    for c in sel["candidates"]:
        lines.append(
            f"| {c.get('seed', '')} | `{c.get('version', '')}` | {c.get('kaggle_val', float('nan')):.2f}% | "
            f"{c.get('pbc_val', float('nan')):.2f}% | {'yes' if c.get('eligible') else 'no'} | "
            f"{c.get('score', float('nan')):.1f} |"
        )
    lines += ["", f"Chosen: `{sel.get('chosen', '')}`." + (f" {sel['tie_break']}." if sel.get("tie_break") else ""), ""]
    return lines


def render_card(card: ModelCard) -> str:
    """The model card as Markdown."""
    t = card.training
    lines = [
        f"# Model card: {card.name}",
        "",
        f"> {card.intended_use}",
        "",
        f"- **Version**: `{card.version}`",
        f"- **Created**: {card.created}",
        f"- **Classes (output order)**: {', '.join(card.classes)}",
        f"- **Input**: {card.input_size}x{card.input_size} RGB. Preprocessing: {card.preprocessing}",
        f"- **Architecture**: {card.architecture}",
        f"- **Temperature** (fitted on validation): {card.temperature:.4f}",
        f"- **Default review threshold**: {round_threshold(card.default_threshold)} in force everywhere "
        f"(fitted {card.default_threshold:.4f})",
    ]
    if card.parent:
        lines.append(f"- **Adapted from**: `{card.parent}`")
    thr = card.threshold
    if thr:
        lines.append(
            f"  chosen on validation for {thr.get('target_accuracy', 0):.0%} accuracy on accepted predictions: "
            f"{thr.get('val_accuracy_accepted', float('nan')):.2%} accepted-accuracy at "
            f"{thr.get('val_coverage', float('nan')):.1%} coverage ({thr.get('val_flagged_share', float('nan')):.1%} "
            f"flagged)."
        )
    lines += ["", f"- **Model file sha256**: `{card.model_sha256}`"]
    if card.litert:
        lt = card.litert
        lines.append(
            f"- **LiteRT flat-buffer** (`{lt.get('file', LITERT_FILE)}`, float32, input {lt.get('input_shape')}) "
            f"sha256: `{lt.get('sha256', '')}`; "
            f"max abs difference from the Keras probabilities {lt.get('max_abs_diff', float('nan')):.1e} on "
            f"{lt.get('check_images', '')} (tolerance {lt.get('tolerance', 0):.0e})"
        )
    lines.append("")
    if t:
        lines += [
            "## Training data",
            "",
            "| source | split | " + " | ".join(card.classes) + " | total |",
            "|---|---|" + "---|" * (len(card.classes) + 1),
        ]
        for src, splits in t.get("counts", {}).items():
            for split, counts in splits.items():
                row = [str(counts.get(c, 0)) for c in card.classes]
                lines.append(f"| {src} | {split} | " + " | ".join(row) + f" | {sum(counts.values())} |")
        lines += ["", "### Split rules", "", t.get("split_rules", ""), ""]
        if t.get("fitted_on"):
            lines += [f"Fitted on: {t['fitted_on']}.", ""]
        if "validation_metrics" in t:
            vm = t["validation_metrics"]
            lines += [
                "## Validation",
                "",
                f"Accuracy {vm.get('val_accuracy', float('nan')):.2%}; NLL "
                f"{vm.get('val_nll_before', float('nan')):.4f} before and {vm.get('val_nll_after', float('nan')):.4f} "
                f"after temperature scaling."
                + (f" Measured on {vm['from']}." if vm.get("from") else ""),
                "",
            ]
        lines += [
            "## Training run",
            "",
            f"- Machine: {t.get('machine', '')}",
            f"- Wall time (s): `{json.dumps(t.get('wall_time_seconds', {}))}`",
        ]
        if t.get("command"):
            lines.append(f"- Command: `{t['command']}`")
        lines.append("")
        lines += _selection_lines(t.get("selection"))
        lines += ["### Hyperparameters", "", "```json", json.dumps(t.get("hyperparameters", {}), indent=2), "```", ""]
    if t.get("trust"):
        tr = t["trust"]
        lines += [
            "## Unfamiliar cells",
            "",
            f"`trust.npz` (python -m hematovision fit-trust): k-NN distance (k {tr.get('k')}) to "
            f"{tr.get('bank_images')} training images' pooled features, weights {json.dumps(tr.get('weights', {}))}; "
            f"threshold {tr.get('threshold', float('nan')):.3f} calls "
            f"{tr.get('validation_unfamiliar_share', float('nan')):.1%} "
            f"of {tr.get('validation_images')} validation images unfamiliar. Fitted {tr.get('fitted', '')}; measured "
            "figures in evaluation.json (`trust`) and docs/trust.md.",
            "",
            "A batch whose images are, as a whole, unlike the validation images (`domain_shift` in `classify "
            "--summary`) is held for review: every prediction in it is flagged, the confident ones with `flag_reason` "
            "`batch_shift` (`--no-batch-hold` keeps them accepted).",
            "",
        ]
        if tr.get("lab_cells"):  # an adapted version: its labeled cells are in-domain for it
            lab = tr["lab_cells"]
            lines += [
                f"Refit for this version ({tr.get('seconds', '?')} s): {lab['in_bank']} of its {lab['labeled']} "
                f"labeled lab cells ({lab['bank_views']} views) in the bank; validation: {tr.get('validation_from')}; "
                f"{lab['unfamiliar_share']:.1%} of those {lab['in_validation']} lab cells unfamiliar.",
                "",
            ]
    if "leave_one_source_out" in t:
        lines += ["## Leave-one-source-out", "", "```json", json.dumps(t["leave_one_source_out"], indent=2), "```", ""]
    lines += ["## Libraries", "", ", ".join(f"{k} {v}" for k, v in card.libraries.items()), ""]
    return "\n".join(lines)
