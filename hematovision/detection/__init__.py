"""White cells in whole smear fields: detection (:mod:`.wbc`), BCCD data and scoring (:mod:`.bccd`),
recoloured copies for stain-robustness checks (:mod:`.recolour`)."""

from .wbc import DEFAULT_PARAMS, CellBox, DetectorParams, FieldAnalysis, analyse_field, box_iou, detect_white_cells

__all__ = [
    "CellBox",
    "DetectorParams",
    "DEFAULT_PARAMS",
    "FieldAnalysis",
    "analyse_field",
    "box_iou",
    "detect_white_cells",
]
