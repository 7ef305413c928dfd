"""The differential report: what it says (:mod:`.content`), the PDF (:mod:`.pdf`),
the dashboard's gallery (:mod:`.gallery`) and Streamlit glue (:mod:`.dashboard`)."""

__all__ = ["content", "pdf", "gallery", "dashboard"]
