"""Where things live: one place that resolves the data dir, database URL and shared data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = "./cxrlabel-data"
DEFAULT_JOB = "pneumonia-pediatric"


def shared_data_dir() -> Path:
    """The read-only shared data (env ``CXRLABEL_SHARED_DATA``, default ``../shared/data``)."""
    return Path(os.environ.get("CXRLABEL_SHARED_DATA", "../shared/data")).resolve()


def bundled_jobs_dir() -> Path:
    """Job files shipped inside the package (copies of the repo's ``jobs/``)."""
    return Path(__file__).parent / "jobs"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    db_url: str | None = None
    # Sign-in sessions (annotate/sessions.py): a session ends after this long without a
    # request, and in any case this long after sign-in.
    session_idle_minutes: float = 8 * 60
    session_max_hours: float = 7 * 24

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'cxrlabel.sqlite3').resolve()}"

    @property
    def renditions_dir(self) -> Path:
        return self.data_dir / "renditions"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None, db_url: str | None = None) -> Settings:
        data = Path(data_dir or os.environ.get("CXRLABEL_DATA_DIR", DEFAULT_DATA_DIR))
        return cls(data_dir=data, db_url=db_url or os.environ.get("CXRLABEL_DB") or None,
                   session_idle_minutes=_env_float("CXRLABEL_SESSION_IDLE_MINUTES", 8 * 60),
                   session_max_hours=_env_float("CXRLABEL_SESSION_MAX_HOURS", 7 * 24))


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of minutes/hours, not {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive number, not {raw!r}")
    return value
