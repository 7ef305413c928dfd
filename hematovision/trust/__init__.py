"""Knowing when not to trust a prediction (issue 19): fitting and measuring the unfamiliar-cell score.

What is saved with a model and read when serving sits lower: the score itself (``trust.npz``:
:mod:`hematovision.modeling.unfamiliar`, applied by ``serving.classifier.Classifier`` to every batch) and
the batch rule (:mod:`hematovision.stats.domain_shift`, used by the run summary). This package is what
needs a model *and* the data:

* :mod:`.fit`: ``python -m hematovision fit-trust --model DIR``: the bank, threshold and outlier bank from
  the model's own split manifest, a LiteRT re-export with the features output when needed, the measured
  figures written into ``evaluation.json`` and the model card; ``refit_version``: the quick refit that follows
  an adaptation (the parent's images through the adapted network, plus the lab's labeled cells);
* :mod:`.refit_cache`: the parent's activations below the adapted blocks for the refit's fixed images, computed
  once per parent (through the served flat-buffer, or ahead of time by ``warm_refit_cache``) and kept in the
  per-user folder, so a refit runs only the network's top;
* :mod:`.outliers`: examples of what is not a white cell (BCCD red cells, platelets, background, blurred
  and cut cells) for fitting and measuring;
* :mod:`.banner`: the dashboard's domain-shift verdict for a results table and the banner's words.

Above ``serving``, ``evaluation`` (the stain-shift families it measures on) and ``detection`` (the BCCD
layout); below ``training`` (adaptation refits the score for a new version) and ``app``.
"""

from .banner import banner_text, frame_shift
from .fit import (
    FitReport,
    TrainingDataMissing,
    TrustRefit,
    fit_model_dir,
    record_in_model,
    refit_version,
    summary_lines,
    warm_refit_cache,
)

__all__ = [
    "FitReport",
    "TrainingDataMissing",
    "TrustRefit",
    "banner_text",
    "fit_model_dir",
    "frame_shift",
    "record_in_model",
    "refit_version",
    "summary_lines",
    "warm_refit_cache",
]
