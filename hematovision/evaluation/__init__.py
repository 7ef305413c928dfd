"""How well a model does: figures on labeled images, and on simulated laboratory shifts.

``evaluate``: every figure of an evaluated set; ``evaluation.json`` and ``test_predictions.csv``.
``shifts``: deterministic stain, scale and camera shifts of test images.
"""

from .evaluate import evaluate_labeled, evaluate_model_on_test_sets, evaluate_predictions, summary_lines

__all__ = ["evaluate_labeled", "evaluate_model_on_test_sets", "evaluate_predictions", "summary_lines"]
