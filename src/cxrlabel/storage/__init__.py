"""Storage edge: SQLAlchemy models, engine setup and Alembic migrations."""

from cxrlabel.storage.db import Database, open_database

__all__ = ["Database", "open_database"]
