"""HematoVision: white-blood-cell classification for research and education (not diagnosis).

Subpackages by concern; each imports only from those to its left (see docs/architecture.md):

    config -> stats, imaging -> data -> modeling -> serving -> evaluation, reports -> review, training -> app, cli

- ``stats``: metrics and calibration (numpy only)
- ``imaging``: decoding, input sources, framing the cell, augmentation
- ``data``: data-root layout, the Kaggle field table, the split, a user's labeled images
- ``modeling``: the network, the saved model directory and its versions
- ``serving``: :class:`~hematovision.serving.Classifier`, LiteRT, Grad-CAM
- ``evaluation``: evaluation figures and files; simulated laboratory shifts
- ``reports``: the predictions table and CSV
- ``review``: the review queue (SQLite)
- ``training``: the training recipe, leave-one-source-out validation, adaptation to a lab
- ``app``: the dashboard's glue (pages live in ``pages/``); ``cli``: ``python -m hematovision``

This module stays light: it imports no subpackage.
"""

__version__ = "0.1.0"
DISCLAIMER = "For research and education only. Not a medical device: do not use for diagnosis or patient care."
