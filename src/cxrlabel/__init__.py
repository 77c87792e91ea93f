"""cxrlabel: crowd labeling of pediatric chest X-rays, from ingest to triage model."""

__version__ = "0.1.0"

LABELS: tuple[str, str] = ("NORMAL", "PNEUMONIA")
