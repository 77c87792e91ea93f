"""The ``source`` column of exports and reports: where an image came from, for the admin.

A JPEG/PNG is named by its original path. A DICOM is named by its original Study and SOP
Instance UIDs (``dicom:<StudyInstanceUID>/<SOPInstanceUID>``), the keys a hospital's PACS and
records use, read from the source file's header at export time (cxrlabel keeps only
de-identified data in its own store); when the file is gone or carries no UIDs, its path.
A DICOMweb source (``dicomweb+http://.../studies/S/series/R/instances/I``) names its UIDs in
the URL itself.

Admin-only: annotator pages and APIs never carry it (tests/test_security_leaks.py).
"""

from __future__ import annotations

import re
from typing import Protocol

_DICOMWEB = re.compile(r"/studies/(?P<study>[0-9.]+)/series/[0-9.]+/instances/(?P<sop>[0-9.]+)$")


class _HasSource(Protocol):
    @property
    def source_path(self) -> str: ...
    @property
    def source_format(self) -> str: ...


def dicom_source(study_uid: str, sop_uid: str) -> str:
    return f"dicom:{study_uid}/{sop_uid}"


class SourceNamer:
    """``namer(image) -> str``; remembers answers, so a report reads each header once."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __call__(self, image: _HasSource) -> str:
        path = image.source_path
        if path not in self._cache:
            self._cache[path] = self._name(path, image.source_format)
        return self._cache[path]

    @staticmethod
    def _name(path: str, source_format: str) -> str:
        if path.startswith("dicomweb+"):
            match = _DICOMWEB.search(path)
            return dicom_source(match["study"], match["sop"]) if match else path
        if source_format != "dicom":
            return path
        uids = _header_uids(path)
        return dicom_source(*uids) if uids else path


def _header_uids(path: str) -> tuple[str, str] | None:
    """(StudyInstanceUID, SOPInstanceUID) from the file's header, or None if unreadable."""
    import pydicom  # only when a DICOM source is named: keeps plain exports light

    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SOPInstanceUID"]
        )
        study, sop = str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
    except Exception:
        return None
    return (study, sop) if study and sop else None
