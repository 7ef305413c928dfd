"""How well a model does: figures on labeled images, and on simulated laboratory shifts.

``evaluate``: every figure of an evaluated set; ``evaluation.json`` and ``test_predictions.csv``.
``shifts``: deterministic stain, scale and camera shifts of test images, and the stain-shift suite's families.
``shift_suite``: the stain-shift suite run on a model (the validation that predicts other laboratories).
"""

from .evaluate import evaluate_labeled, evaluate_model_on_test_sets, evaluate_predictions, summary_lines
from .shift_suite import record_in_model as record_suite_in_model
from .shift_suite import run_suite
from .shift_suite import table as suite_table

__all__ = [
    "evaluate_labeled",
    "evaluate_model_on_test_sets",
    "evaluate_predictions",
    "record_suite_in_model",
    "run_suite",
    "suite_table",
    "summary_lines",
]
