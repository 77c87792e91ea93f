"""cxrlabel: crowd labeling of pediatric chest X-rays, from ingest to triage model."""

from cxrlabel.vocab import LABELS

__version__ = "0.1.0"

__all__ = ["LABELS", "__version__"]
