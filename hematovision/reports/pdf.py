"""The differential report as a PDF: ReportLab lays out a :class:`~.content.ReportContent`.

Layout only; what the report says is decided in :mod:`.content`. A4 portrait: a header
(sample, operator, dates, versions, the model's test figures), the review status, the
differential beside adult reference intervals, field views with numbered boxes (field
mode), the cell gallery grouped by final class, and on every page a running header, the
research-and-education disclaimer and "page n of m".
"""

from __future__ import annotations

import io
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from .content import IMAGE_NOT_AVAILABLE, UNIDENTIFIED, FieldView, GalleryCell, ReportContent

# ReportLab is imported inside the functions that draw (it is only needed when a PDF is made).

INK = "#1f2933"
MUTED = "#616e7c"
RULE = "#cbd2d9"
SHADE = "#f0f4f8"
AMBER = "#b45309"
AMBER_BG = "#fef3c7"
GREEN = "#166534"
GREEN_BG = "#dcfce7"
FLAG = "#d97706"
RECLASS = "#1d4ed8"
CLASS_COLOURS = {
    "eosinophil": "#dc2626",
    "lymphocyte": "#2563eb",
    "monocyte": "#7c3aed",
    "neutrophil": "#059669",
    "basophil": "#0891b2",
    "unusable": "#6b7280",
    UNIDENTIFIED: "#6b7280",
}
GALLERY_COLUMNS = 7


def _jpeg(rgb: np.ndarray, quality: int = 88) -> io.BytesIO:
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return buf


def _styles():
    from reportlab.lib.colors import HexColor
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet

    base = getSampleStyleSheet()
    s = {
        "title": ParagraphStyle(
            "title",
            parent=base["Title"],
            fontName="Helvetica-Bold",
            fontSize=17,
            leading=21,
            alignment=0,
            spaceAfter=2,
            textColor=HexColor(INK),
        ),
        "subtitle": ParagraphStyle(
            "subtitle", parent=base["Normal"], fontSize=9, leading=12, textColor=HexColor(MUTED)
        ),
        "h2": ParagraphStyle(
            "h2",
            parent=base["Heading2"],
            fontName="Helvetica-Bold",
            fontSize=11.5,
            leading=14,
            spaceBefore=10,
            spaceAfter=4,
            textColor=HexColor(INK),
        ),
        "h3": ParagraphStyle(
            "h3",
            parent=base["Heading3"],
            fontName="Helvetica-Bold",
            fontSize=9.5,
            leading=12,
            spaceBefore=6,
            spaceAfter=3,
            textColor=HexColor(INK),
        ),
        "body": ParagraphStyle("body", parent=base["Normal"], fontSize=8.5, leading=11, textColor=HexColor(INK)),
        "small": ParagraphStyle("small", parent=base["Normal"], fontSize=7.5, leading=9.5, textColor=HexColor(MUTED)),
        "label": ParagraphStyle("label", parent=base["Normal"], fontSize=7.5, leading=9.5, textColor=HexColor(MUTED)),
        "value": ParagraphStyle(
            "value", parent=base["Normal"], fontName="Helvetica-Bold", fontSize=9, leading=11.5, textColor=HexColor(INK)
        ),
        "cell": ParagraphStyle(
            "cell", parent=base["Normal"], fontSize=6.3, leading=7.6, alignment=1, textColor=HexColor(INK)
        ),
        "missing": ParagraphStyle(
            "missing", parent=base["Normal"], fontSize=6.5, leading=8, alignment=1, textColor=HexColor(MUTED)
        ),
        "status": ParagraphStyle("status", parent=base["Normal"], fontName="Helvetica-Bold", fontSize=12, leading=15),
    }
    return s


def _header_block(c: ReportContent, s, width: float):
    from reportlab.lib.colors import HexColor
    from reportlab.platypus import Paragraph, Table, TableStyle

    def pair(label: str, value: str):
        return [Paragraph(escape(label), s["label"]), Paragraph(escape(value) if value else "\u2014", s["value"])]

    thr = f"{c.threshold:.3f}" if c.threshold is not None else "not recorded"
    what = f"{c.n_rows} cells in {len(c.fields)} fields" if c.field_mode else f"{c.n_rows} images"
    rows = [
        pair("Sample ID", c.sample_id) + pair("Operator", c.operator),
        pair("Report created", c.created_at) + pair("Results", f"{c.source or 'classify results'} ({what})"),
        pair("HematoVision version", c.hematovision_version) + pair("Model version", c.model.version),
        pair("Review threshold", thr)
        + pair("Cell framing", "framed cell (nucleus located)" if c.model.framing == "cell" else "whole image"),
    ]
    lw = 0.17 * width
    t = Table(rows, colWidths=[lw, 0.5 * width - lw, lw, 0.5 * width - lw])
    t.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                ("BACKGROUND", (0, 0), (-1, -1), HexColor(SHADE)),
                ("LINEBELOW", (0, 0), (-1, -2), 0.4, HexColor(RULE)),
                ("BOX", (0, 0), (-1, -1), 0.6, HexColor(RULE)),
                ("TOPPADDING", (0, 0), (-1, -1), 3.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 3.5),
            ]
        )
    )
    return t


def _status_block(c: ReportContent, s, width: float):
    from reportlab.lib.colors import HexColor
    from reportlab.platypus import Paragraph, Table, TableStyle

    st = c.status
    colour, bg = (AMBER, AMBER_BG) if st.preliminary else (GREEN, GREEN_BG)
    lines = [Paragraph(f'<font color="{colour}">{escape(st.headline)}</font>', s["status"])]
    done = (
        f"{st.n_reviewed} cell(s) reviewed: {st.n_confirmed} confirmed, {st.n_reclassified} reclassified, "
        f"{st.n_unusable} not a white cell / unusable."
    )
    n_cells = c.total_cells + c.n_unusable + (c.n_unidentified or 0)
    if st.preliminary:
        lines.append(
            Paragraph(
                f"{st.n_flagged} of {n_cells} cells were flagged for review (calibrated confidence below the "
                f"threshold). {done} This differential is not final and must not be signed off until every flagged "
                "cell has a decision (Review page); then issue the report again.",
                s["body"],
            )
        )
    else:
        who = ", ".join(st.reviewers) if st.reviewers else "\u2014"
        when = st.last_reviewed_at or "\u2014"
        lines.append(Paragraph(f"{done} Reviewed by: <b>{escape(who)}</b>; last decision {escape(when)}.", s["body"]))
        lines.append(
            Paragraph(
                "<br/>Signed off by: ______________________________ &nbsp;&nbsp; "
                "Date: ________________ &nbsp;&nbsp; Signature: ______________________",
                s["body"],
            )
        )
    t = Table([[x] for x in lines], colWidths=[width])
    t.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), HexColor(bg)),
                ("LINEBEFORE", (0, 0), (0, -1), 3, HexColor(colour)),
                ("LEFTPADDING", (0, 0), (-1, -1), 9),
                ("TOPPADDING", (0, 0), (-1, -1), 3),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
            ]
        )
    )
    return t


def _differential_block(c: ReportContent, s, width: float):
    from reportlab.lib.colors import HexColor
    from reportlab.platypus import Paragraph, Table, TableStyle

    head = ["Cell class", "Count", "Percent", "Adult reference interval (%)"]
    rows = [head]
    for r in c.differential:
        ref = f"{r.reference[0]:g}\u2013{r.reference[1]:g}" if r.reference else "\u2014"
        rows.append([r.cell_class, str(r.count), f"{r.percent:.1f}%", ref])
    rows.append(["Total white cells", str(c.total_cells), "100.0%" if c.total_cells else "\u2014", ""])
    t = Table(rows, colWidths=[0.36 * width, 0.14 * width, 0.14 * width, 0.36 * width], hAlign="LEFT")
    t.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
                ("FONTSIZE", (0, 0), (-1, -1), 9),
                ("TEXTCOLOR", (0, 0), (-1, -1), HexColor(INK)),
                ("BACKGROUND", (0, 0), (-1, 0), HexColor(SHADE)),
                ("LINEBELOW", (0, 0), (-1, 0), 0.8, HexColor(INK)),
                ("LINEBELOW", (0, 1), (-1, -3), 0.3, HexColor(RULE)),
                ("LINEABOVE", (0, -1), (-1, -1), 0.8, HexColor(INK)),
                ("FONTNAME", (0, -1), (-1, -1), "Helvetica-Bold"),
                ("ALIGN", (1, 0), (2, -1), "RIGHT"),
                ("ALIGN", (3, 0), (3, -1), "CENTER"),
                ("TOPPADDING", (0, 0), (-1, -1), 3),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
            ]
        )
    )
    unident = "not assessed by this model" if c.n_unidentified is None else str(c.n_unidentified)
    other = [
        ["Unidentified / unfamiliar (not in the differential)", unident],
        ["Not a white cell / unusable (reviewed; not in the differential)", str(c.n_unusable)],
        ["Images that could not be classified (errors)", str(c.n_errors)],
    ]
    if c.field_mode:
        other.append(["Fields in which no white cell was found", str(c.n_no_cell)])
    if c.n_held:
        other.insert(0, ["Held for review with their batch (it looks unlike the training images)", str(c.n_held)])
    o = Table(other, colWidths=[0.64 * width, 0.36 * width], hAlign="LEFT")
    o.setStyle(
        TableStyle(
            [
                ("FONTSIZE", (0, 0), (-1, -1), 8.5),
                ("TEXTCOLOR", (0, 0), (-1, -1), HexColor(INK)),
                ("LINEBELOW", (0, 0), (-1, -1), 0.3, HexColor(RULE)),
                ("ALIGN", (1, 0), (1, -1), "CENTER"),
                ("TOPPADDING", (0, 0), (-1, -1), 2.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
            ]
        )
    )
    note = Paragraph(
        f"<i>{escape(c.reference_label)}.</i> Intervals differ between laboratories and populations; "
        "this count is a research result, not a clinical differential.",
        s["small"],
    )
    return [t, Paragraph("&nbsp;", s["small"]), note, Paragraph("&nbsp;", s["small"]), o]


def _gallery_cell(cell: GalleryCell, s, side: float):
    from reportlab.platypus import Image, Paragraph, Table, TableStyle

    if cell.image is not None:
        pic = Image(_jpeg(cell.image), width=side, height=side)
    else:
        pic = Table([[Paragraph(IMAGE_NOT_AVAILABLE, s["missing"])]], colWidths=[side], rowHeights=[side])
        pic.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("BACKGROUND", (0, 0), (-1, -1), "#eef0f2")]))
    marks = []
    if cell.flagged:
        marks.append(f'<font color="{FLAG if not cell.reviewed else MUTED}"><b>flagged</b></font>')
    if cell.reclassified:
        marks.append(f'<font color="{RECLASS}"><b>was {escape(cell.predicted_class)}</b></font>')
    elif cell.action == "confirmed":
        marks.append('<font color="#166534">confirmed</font>')
    elif cell.action == "unusable":
        marks.append(f'<font color="{RECLASS}"><b>unusable</b> (was {escape(cell.predicted_class)})</font>')
    label = escape(cell.label if len(cell.label) <= 22 else cell.label[:10] + "\u2026" + cell.label[-10:])
    caption = f"#{cell.number} \u00b7 {cell.confidence:.2f}<br/>{label}" + (
        "<br/>" + " \u00b7 ".join(marks) if marks else ""
    )
    return [pic, Paragraph(caption, s["cell"])]


def _gallery_block(c: ReportContent, s, width: float):
    from reportlab.lib.colors import HexColor
    from reportlab.platypus import CondPageBreak, Paragraph, Table, TableStyle

    seen = "the framed cell around the located nucleus" if c.model.framing == "cell" else "the whole image"
    out = [
        CondPageBreak(60),
        Paragraph("Cell gallery: what the network saw", s["h2"]),
        Paragraph(
            f"Every cell, grouped by its final class (the reviewed class where there is one). Each picture is the "
            f"square the model classified ({seen}). "
            f"Under each: the row number in the results, the calibrated confidence, the image. "
            f'Frame: <font color="{FLAG}"><b>orange</b></font>, flagged and not yet reviewed; '
            f'<font color="{GREEN}"><b>green</b></font>, confirmed by a reviewer; '
            f'<font color="{RECLASS}"><b>blue</b></font>, reclassified (or unusable) by a reviewer.',
            s["small"],
        ),
    ]
    if c.n_images_missing:
        out.append(
            Paragraph(
                f"{c.n_images_missing} cell(s): {IMAGE_NOT_AVAILABLE} (the file has moved and the review "
                "store holds no thumbnail).",
                s["small"],
            )
        )
    if c.gallery_left_out:
        out.append(
            Paragraph(
                f"{c.gallery_left_out} further cell(s) are counted in the differential but not shown.", s["small"]
            )
        )
    col_w = width / GALLERY_COLUMNS
    side = col_w - 8
    for g in c.gallery:
        title = {UNIDENTIFIED: "unidentified / unfamiliar", "unusable": "not a white cell / unusable"}.get(
            g.name, g.name
        )
        colour = CLASS_COLOURS.get(g.name, INK)
        out.append(CondPageBreak(side + 60))
        out.append(
            Paragraph(
                f'<font color="{colour}">\u25a0</font> {escape(title)} \u2014 {len(g.cells)} cell'
                f"{'s' if len(g.cells) != 1 else ''}",
                s["h3"],
            )
        )
        cells = list(g.cells)
        rows = [cells[k : k + GALLERY_COLUMNS] for k in range(0, len(cells), GALLERY_COLUMNS)]
        data, style = (
            [],
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("ALIGN", (0, 0), (-1, -1), "CENTER"),
                ("LEFTPADDING", (0, 0), (-1, -1), 2),
                ("RIGHTPADDING", (0, 0), (-1, -1), 2),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
            ],
        )
        for r, row in enumerate(rows):
            data.append([_gallery_cell(cell, s, side) for cell in row] + [""] * (GALLERY_COLUMNS - len(row)))
            for k, cell in enumerate(row):
                if cell.reclassified or cell.action == "unusable":
                    style.append(("BOX", (k, r), (k, r), 1.6, HexColor(RECLASS)))
                elif cell.action == "confirmed":
                    style.append(("BOX", (k, r), (k, r), 1.6, HexColor(GREEN)))
                elif cell.flagged:
                    style.append(("BOX", (k, r), (k, r), 1.6, HexColor(FLAG)))
        t = Table(data, colWidths=[col_w] * GALLERY_COLUMNS, hAlign="LEFT", repeatRows=0)
        t.setStyle(TableStyle(style))
        out.append(t)
    return out


def _field_flowable(view: FieldView, s, width: float):
    from reportlab.lib.colors import HexColor
    from reportlab.platypus import Flowable, Paragraph

    if view.image is None:
        return Paragraph(
            f"Field {view.number} ({escape(Path(view.file).name)}): {IMAGE_NOT_AVAILABLE}; "
            f"{len(view.boxes)} cell(s) found.",
            s["small"],
        )
    h, w = view.image.shape[:2]
    scale = min(width / w, 70 * 72 / 25.4 / h)
    pic = _jpeg(view.image)

    class FieldImage(Flowable):
        def wrap(self, aw, ah):
            return w * scale, h * scale + 12

        def draw(self):
            from reportlab.lib.utils import ImageReader

            cv = self.canv
            cv.drawImage(ImageReader(pic), 0, 12, w * scale, h * scale)
            cv.setFont("Helvetica", 7.5)
            cv.setFillColor(HexColor(MUTED))
            cv.drawString(0, 2, f"Field {view.number}: {Path(view.file).name} \u00b7 {len(view.boxes)} cell(s)")
            for b in view.boxes:
                x0, y0, x1, y1 = (v * scale for v in b.box)
                colour = HexColor(CLASS_COLOURS.get(b.final_class, INK))
                cv.setStrokeColor(colour)
                cv.setLineWidth(1.4)
                cv.rect(x0, 12 + h * scale - y1, x1 - x0, y1 - y0, stroke=1, fill=0)
                cv.setFillColor(colour)
                cv.rect(x0, 12 + h * scale - y0, 14, -10, stroke=0, fill=1)
                cv.setFillColor(HexColor("#ffffff"))
                cv.setFont("Helvetica-Bold", 7.5)
                cv.drawCentredString(x0 + 7, 12 + h * scale - y0 - 7.5, str(b.cell))

    return FieldImage()


def _page_decorations(c: ReportContent):
    """Running header and footer; the canvas class writes "page n of m" once the page count is known."""
    from reportlab.lib.colors import HexColor
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.pdfgen.canvas import Canvas

    left, right = 16 * mm, A4[0] - 16 * mm
    sample = c.sample_id or "no sample ID"

    class NumberedCanvas(Canvas):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._pages = []

        def showPage(self):
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self):
            total = len(self._pages)
            for state in self._pages:
                self.__dict__.update(state)
                self._decorate(total)
                super().showPage()
            super().save()

        def _decorate(self, total: int):
            self.saveState()
            self.setStrokeColor(HexColor(RULE))
            self.setLineWidth(0.6)
            self.line(left, A4[1] - 13 * mm, right, A4[1] - 13 * mm)
            self.line(left, 14 * mm, right, 14 * mm)
            self.setFont("Helvetica-Bold", 8)
            self.setFillColor(HexColor(INK))
            self.drawString(left, A4[1] - 11 * mm, "HematoVision \u00b7 White blood cell differential")
            self.setFont("Helvetica", 8)
            status = "PRELIMINARY" if c.status.preliminary else "REVIEWED"
            self.drawRightString(right, A4[1] - 11 * mm, f"Sample {sample} \u00b7 {status}")
            self.setFont("Helvetica", 7)
            self.setFillColor(HexColor(MUTED))
            self.drawString(left, 10 * mm, c.disclaimer)
            self.drawRightString(right, 10 * mm, f"Page {self._pageNumber} of {total}")
            self.restoreState()

    return NumberedCanvas


def render_pdf(content: ReportContent, out: str | Path | None = None) -> bytes:
    """The report as PDF bytes (also written to ``out`` when given)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer

    c = content
    s = _styles()
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=16 * mm,
        rightMargin=16 * mm,
        topMargin=18 * mm,
        bottomMargin=19 * mm,
        title=f"HematoVision differential report {c.sample_id}".strip(),
        author=c.operator or "HematoVision",
        subject="White blood cell differential (research use)",
        creator=f"HematoVision {c.hematovision_version}",
    )
    width = doc.width
    story = [
        Paragraph("White blood cell differential", s["title"]),
        Paragraph(
            f"Automated classification by HematoVision with review by a person. {escape(c.disclaimer)}", s["subtitle"]
        ),
        Spacer(1, 8),
        _header_block(c, s, width),
    ]
    if c.model.figures:
        story.append(
            Paragraph(
                "Model on held-out test sets (never trained or tuned on): "
                + "; ".join(escape(f) for f in c.model.figures)
                + ".",
                s["small"],
            )
        )
    elif not c.model.found:
        story.append(
            Paragraph("The model's card is not on this machine: its test figures cannot be shown.", s["small"])
        )
    story += [Spacer(1, 8), _status_block(c, s, width), Paragraph("Differential", s["h2"])]
    story.append(KeepTogether(_differential_block(c, s, width)))
    if c.errors:
        story.append(Paragraph("Images not classified", s["h3"]))
        for f, why in c.errors[:30]:
            story.append(Paragraph(f"{escape(Path(f).name or f)}: {escape(why)}", s["small"]))
        if len(c.errors) > 30:
            story.append(Paragraph(f"\u2026 and {len(c.errors) - 30} more (see the results CSV).", s["small"]))
    if c.fields:
        from reportlab.platypus import Table, TableStyle

        story.append(Paragraph("Fields with the cells found", s["h2"]))
        story.append(
            Paragraph(
                "Each white cell found, numbered as in the results' <i>cell</i> column; box colour: final class.",
                s["small"],
            )
        )
        half = width / 2
        views = [_field_flowable(v, s, half - 8) for v in c.fields]
        pairs = [views[k : k + 2] + [""] * (2 - len(views[k : k + 2])) for k in range(0, len(views), 2)]
        grid = Table(pairs, colWidths=[half, half], hAlign="LEFT")
        grid.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("LEFTPADDING", (0, 0), (-1, -1), 0),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 8),
                ]
            )
        )
        story.append(grid)
        if c.fields_left_out:
            story.append(Paragraph(f"{c.fields_left_out} further field(s) are counted but not drawn.", s["small"]))
    story += _gallery_block(c, s, width)
    doc.build(story, canvasmaker=_page_decorations(c))
    data = buf.getvalue()
    if out is not None:
        Path(out).write_bytes(data)
    return data
