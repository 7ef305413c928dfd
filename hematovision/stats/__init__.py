"""Figures from labels and probabilities (numpy only): metrics and calibration.

``metrics``: confusion matrix, per-class precision/recall/F1, ROC, Wilson and cluster-bootstrap
intervals. ``calibration``: temperature scaling, reliability and ECE, the review threshold.
``threshold_advice``: which threshold a test set supports for a target accuracy (on a 95% lower bound), or none.
``domain_shift``: whether a batch (its unfamiliar share, its scores against validation's) is unlike the training data.
"""

from .calibration import (
    THRESHOLD_DECIMALS,
    ThresholdChoice,
    choose_threshold,
    ece_of,
    fit_temperature,
    flag_budget_threshold,
    nll,
    reliability,
    risk_coverage,
    round_threshold,
    softmax,
    threshold_for_accuracy,
)
from .domain_shift import DomainShift, domain_shift, domain_shift_counts
from .metrics import cluster_bootstrap, confusion_matrix, macro_f1, per_class, roc_curve_ovr, wilson_interval
from .threshold_advice import Advice, advise

__all__ = [
    "THRESHOLD_DECIMALS",
    "Advice",
    "DomainShift",
    "ThresholdChoice",
    "advise",
    "choose_threshold",
    "cluster_bootstrap",
    "confusion_matrix",
    "domain_shift",
    "domain_shift_counts",
    "ece_of",
    "fit_temperature",
    "flag_budget_threshold",
    "macro_f1",
    "nll",
    "per_class",
    "round_threshold",
    "reliability",
    "risk_coverage",
    "roc_curve_ovr",
    "softmax",
    "threshold_for_accuracy",
    "wilson_interval",
]
