"""Patient ids for grouping splits: from a manifest, a DICOM pseudonym, or the file name.

The file-name rule is the job's ``ingest.patient_id_pattern``: a regex searched in the file stem
whose first matched named group starting with ``pid`` is the id. The default fits the Kermany
names: ``person123_bacteria_456`` -> ``person123``, ``IM-0001-0001`` -> ``IM-0001``,
``NORMAL2-IM-0123-0001`` -> ``NORMAL2-IM-0123`` (the two NORMAL series number patients
independently, so the prefix is kept).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import PurePath

MAX_LENGTH = 120  # the width of Image.patient_id


@lru_cache(maxsize=32)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def patient_id_from_name(path: str | PurePath, pattern: str) -> str | None:
    """The patient id in a file's stem, or None when the pattern does not match."""
    stem = PurePath(path).stem
    match = _compile(pattern).search(stem)
    if match is None:
        return None
    for name, value in match.groupdict().items():
        if name.startswith("pid") and value:
            return value[:MAX_LENGTH]
    return None


def choose_patient_id(
    *, manifest_id: str | None, dicom_pseudonym: str | None, name_id: str | None
) -> str | None:
    """An explicit manifest id wins; a DICOM gets its pseudonym; else the file-name rule."""
    for candidate in (manifest_id, dicom_pseudonym, name_id):
        if candidate and candidate.strip():
            return candidate.strip()[:MAX_LENGTH]
    return None
