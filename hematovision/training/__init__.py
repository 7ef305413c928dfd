"""Make and check a model.

``recipe``: the training recipe (split, cached frozen features, head, fine-tuning, calibration, export).
``loso``: leave-one-source-out validation of the recipe, and the adaptation curve.
``deep``: the deep phase (every layer but BatchNorm trainable, fresh views every epoch) from a trained model.
``adapt``: adapt a model to one laboratory from a few labeled images (a new model version).
"""

from .adapt import AdaptConfig, AdaptOutcome, adapt_labeled, adapt_model, labeled_from_reviews
from .deep import DeepConfig, deep_fit
from .loso import VARIANTS, run_loso
from .recipe import AUGMENT_RECIPES, Fitted, TrainConfig, export, fit, refit_config, train_command

__all__ = [
    "AUGMENT_RECIPES",
    "VARIANTS",
    "AdaptConfig",
    "AdaptOutcome",
    "DeepConfig",
    "Fitted",
    "TrainConfig",
    "adapt_labeled",
    "adapt_model",
    "deep_fit",
    "export",
    "fit",
    "labeled_from_reviews",
    "refit_config",
    "run_loso",
    "train_command",
]
