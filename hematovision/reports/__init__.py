"""What a user takes away: the predictions table and its CSV (``tables``); the differential report: what it
says (``content``: one function, :func:`build_report`, for the CLI and the dashboard) and its PDF (``pdf``,
ReportLab imported only when a PDF is made).

Review decisions come in as plain data (:class:`Reviews`): the review store sits in a layer above this one.
The dashboard's gallery and report button are in :mod:`hematovision.app.gallery` and
:mod:`hematovision.app.report_views`.
"""

from .content import (
    ModelInfo,
    ReportContent,
    ReportInputError,
    Reviews,
    build_report,
    files_on_disk,
    model_info,
    read_results,
    report_from_csv,
)
from .pdf import render_pdf
from .tables import UNUSABLE, columns, hold_frame, neutralise, predictions_frame, to_csv

__all__ = [
    "UNUSABLE",
    "ModelInfo",
    "ReportContent",
    "ReportInputError",
    "Reviews",
    "build_report",
    "columns",
    "files_on_disk",
    "hold_frame",
    "model_info",
    "neutralise",
    "predictions_frame",
    "read_results",
    "render_pdf",
    "report_from_csv",
    "to_csv",
]
