"""Classify images with a saved model, and explain a prediction.

``classifier``: :class:`Classifier` (batch in, one :class:`Prediction` per input, in order).
``litert``: the LiteRT flat-buffer runtime it prefers, and its export and check.
``gradcam``: the heat map of what the network looked at.
``ray_engine``: the same classification on Ray Data (``classify --engine ray``; imported by name, Ray only when run).
"""

from .classifier import BATCH_SHIFT, Classifier, Prediction, flag_reason, is_flagged
from .gradcam import GradCam, HeatMap, for_classifier, overlay
from .litert import LiteRTRuntime, check_images, check_litert, export_litert

__all__ = [
    "BATCH_SHIFT",
    "Classifier",
    "GradCam",
    "HeatMap",
    "LiteRTRuntime",
    "Prediction",
    "check_images",
    "check_litert",
    "export_litert",
    "flag_reason",
    "for_classifier",
    "is_flagged",
    "overlay",
]
