"""The differential report: what it says (:mod:`.content`), the PDF (:mod:`.pdf`), the dashboard gallery (:mod:`.gallery`)."""

__all__ = ["content", "pdf", "gallery"]
