"""HematoVision: white-blood-cell classification for research and education (not diagnosis).

Modules, one job each (see docs/architecture.md):
config, imaging, sources, datasets, augment, model, training, calibration,
metrics, evaluation, persistence, inference, report, cli.
"""

__version__ = "0.1.0"
DISCLAIMER = "For research and education only. Not a medical device: do not use for diagnosis or patient care."
