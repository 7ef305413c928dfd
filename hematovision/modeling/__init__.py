"""The network and what is saved with it.

``network``: MobileNetV2 with resizing, preprocessing, head and temperature inside one Keras graph
(TensorFlow is imported inside its functions). ``persistence``: the model directory (``model.keras``,
the model card, evaluation files). ``versions``: adapted model versions beside the shipped one.
``features``: a network's logits or pooled features for dataset files (training-time helpers).
``unfamiliar``: the unfamiliar-cell score's statistics saved beside a model (``trust.npz``), numpy only.
"""

from .features import layer_outputs_keras, predict_logits_keras
from .network import INPUT_NORMS, LAST_CONV_LAYER, LOGITS_LAYER, SPLIT_LAYER, TEMPERATURE_LAYER, build_network
from .persistence import ModelCard, ModelError, load_card, load_keras_model, save_model, update_card
from .unfamiliar import LAB_FILE, TRUST_FILE, LabCells, TrustModel
from .versions import ModelVersion, check_name, list_versions, new_version_dir

__all__ = [
    "INPUT_NORMS",
    "LAB_FILE",
    "LAST_CONV_LAYER",
    "LOGITS_LAYER",
    "SPLIT_LAYER",
    "TEMPERATURE_LAYER",
    "TRUST_FILE",
    "LabCells",
    "ModelCard",
    "ModelError",
    "ModelVersion",
    "TrustModel",
    "build_network",
    "check_name",
    "layer_outputs_keras",
    "list_versions",
    "load_card",
    "load_keras_model",
    "new_version_dir",
    "predict_logits_keras",
    "save_model",
    "update_card",
]
