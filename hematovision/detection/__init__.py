"""White cells in whole smear fields.

``wbc``: the white-cell detector (stain-relative nucleus map, red-cell granulometry, size rules, touching
cells split) → :class:`CellBox` per cell. ``cells``: each cell cropped and classified through
``serving.classifier.Classifier`` (the single-image framing) → ``FieldResult``. ``report``: per-cell CSV rows
and the run summary. ``bccd``: the BCCD annotations, recorded split and box scoring. ``recolour``,
``synthetic``: recoloured copies and generated fields for checks and tests.

Below ``app`` and ``cli``, above ``serving`` and ``reports``: the dashboard's Whole fields mode is
``hematovision.app.fields``.
"""

from .wbc import DEFAULT_PARAMS, CellBox, DetectorParams, FieldAnalysis, analyse_field, box_iou, detect_white_cells

__all__ = [
    "DEFAULT_PARAMS",
    "CellBox",
    "DetectorParams",
    "FieldAnalysis",
    "analyse_field",
    "box_iou",
    "detect_white_cells",
]
