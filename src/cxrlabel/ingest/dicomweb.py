"""A PACS as a source: ``cxrlabel ingest dicomweb+http://HOST:PORT/PATH``.

QIDO-RS (PS3.18 10.6) finds the studies (filters: study date range, modality, study UID) and
their instances; WADO-RS (PS3.18 10.4) retrieves each new instance as ``application/dicom`` in
its stored transfer syntax. Each instance becomes a :class:`SourceItem` whose ``path`` is its
URL, ``dicomweb+http://.../studies/S/series/R/instances/I``, and whose bytes are fetched only
when the pipeline asks for them: the pipeline de-identifies them like any DICOM file, and
skips, without downloading, every URL it already holds (an image or a duplicate), so a re-run
fetches only new instances. Failures are retried on the next run.

The instance URL keeps the source's original UIDs: like a file path it is admin-only (it is
the ``source`` column of exports and reports) and never reaches an annotator.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeGuard

import httpx

from cxrlabel.ingest.decode import DecodeError
from cxrlabel.ingest.sources import SourceError, SourceItem

SCHEME = "dicomweb+"
PAGE_SIZE = 500  # QIDO-RS results per request (limit/offset paging)
MAX_INSTANCE_BYTES = 256 * 1024 * 1024  # the same ceiling as a file (decode.DEFAULT_LIMITS)
STUDY_UID, SERIES_UID, SOP_UID, MODALITY = "0020000D", "0020000E", "00080018", "00080060"
DICOM_PART = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_dicomweb(source: str) -> bool:
    return source.startswith(SCHEME)


@dataclass(frozen=True)
class DicomWebQuery:
    """Which studies to pull; empty fields do not filter."""

    since: date | None = None
    until: date | None = None
    modality: str | None = None
    study_uid: str | None = None

    def study_params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.since or self.until:
            low = self.since.strftime("%Y%m%d") if self.since else ""
            high = self.until.strftime("%Y%m%d") if self.until else ""
            params["StudyDate"] = f"{low}-{high}"
        if self.modality:
            params["ModalitiesInStudy"] = self.modality
        if self.study_uid:
            params["StudyInstanceUID"] = self.study_uid
        return params


@dataclass
class DicomWebClient:
    """A small QIDO-RS / WADO-RS client over httpx; ``retrieved`` counts instance downloads."""

    base_url: str  # http(s)://host:port/path, without the dicomweb+ prefix
    timeout_s: float = 60.0
    retrieved: int = 0
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._http = httpx.Client(timeout=self.timeout_s, follow_redirects=False)

    @classmethod
    def from_source(cls, source: str) -> DicomWebClient:
        url = source[len(SCHEME) :] if is_dicomweb(source) else source
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise SourceError(
                f"{source}: expected dicomweb+http://HOST:PORT/PATH (or dicomweb+https://...)"
            )
        return cls(url)

    def close(self) -> None:
        self._http.close()

    # --- QIDO-RS ------------------------------------------------------------------------------
    def search(self, path: str, params: dict[str, str] | None = None) -> Iterator[dict]:
        """Every result of a QIDO-RS search, page by page."""
        offset = 0
        while True:
            page = self._get_json(
                path, {**(params or {}), "limit": str(PAGE_SIZE), "offset": str(offset)}
            )
            yield from page
            if len(page) < PAGE_SIZE:
                return
            offset += len(page)

    def _get_json(self, path: str, params: dict[str, str]) -> list[dict]:
        url = f"{self.base_url}/{path}"
        try:
            response = self._http.get(
                url, params=params, headers={"Accept": "application/dicom+json"}
            )
        except httpx.HTTPError as exc:
            raise SourceError(
                f"DICOMweb server {self.base_url} unreachable: {type(exc).__name__}"
            ) from None
        if response.status_code == 204:  # "no matches" in PS3.18
            return []
        if response.status_code != 200:
            raise SourceError(f"DICOMweb search {path} failed: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise SourceError(f"DICOMweb search {path}: the answer is not JSON") from None
        if not isinstance(body, list):
            raise SourceError(f"DICOMweb search {path}: expected a JSON array")
        return body

    # --- WADO-RS ------------------------------------------------------------------------------
    def retrieve(self, study: str, series: str, sop: str) -> bytes:
        """One instance as DICOM bytes (its stored transfer syntax), or DecodeError."""
        path = f"studies/{study}/series/{series}/instances/{sop}"
        try:
            with self._http.stream(
                "GET", f"{self.base_url}/{path}", headers={"Accept": DICOM_PART}
            ) as response:
                if response.status_code != 200:
                    raise DecodeError(f"DICOMweb retrieve failed: HTTP {response.status_code}")
                body = _read_capped(response)
                content_type = response.headers.get("content-type", "")
        except httpx.HTTPError as exc:
            raise DecodeError(f"DICOMweb retrieve failed: {type(exc).__name__}") from None
        self.retrieved += 1
        parts = multipart_parts(body, content_type)
        if len(parts) != 1:
            raise DecodeError(f"DICOMweb retrieve: expected one DICOM part, got {len(parts)}")
        return parts[0]


def _read_capped(response: httpx.Response) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_INSTANCE_BYTES:
            raise DecodeError("file too large")
        chunks.append(chunk)
    return b"".join(chunks)


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of a ``multipart/related`` message (RFC 2046), headers stripped."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/") or match is None:
        if content_type.lower().startswith("application/dicom"):
            return [body]  # a server that answers with the bare instance
        raise DecodeError("DICOMweb retrieve: not a multipart answer")
    delimiter = b"--" + match.group(1).encode("ascii")
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise DecodeError("DICOMweb retrieve: malformed multipart part")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


# --- listing instances as source items ----------------------------------------------------------


def _first(dataset: dict[str, Any], tag: str) -> str | None:
    values = (dataset.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def instance_url(source_base: str, study: str, series: str, sop: str) -> str:
    return f"{SCHEME}{source_base}/studies/{study}/series/{series}/instances/{sop}"


def list_instances(client: DicomWebClient, query: DicomWebQuery) -> list[tuple[str, str, str]]:
    """(study, series, SOP instance) UIDs of every instance the query selects, sorted."""
    found: set[tuple[str, str, str]] = set()
    for study in client.search("studies", query.study_params()):
        study_uid = _first(study, STUDY_UID)
        if not _is_uid(study_uid):
            continue
        for series_uid in _series_of(client, study_uid, query.modality):
            path = f"studies/{study_uid}/series/{series_uid}/instances"
            for instance in client.search(path):
                sop = _first(instance, SOP_UID)
                if _is_uid(sop):
                    found.add((study_uid, series_uid, sop))
    return sorted(found)


def _series_of(client: DicomWebClient, study_uid: str, modality: str | None) -> list[str]:
    """Series of a study; with a modality, only that modality's series (a study may mix)."""
    params = {"Modality": modality} if modality else {}
    uids = []
    for series in client.search(f"studies/{study_uid}/series", params):
        uid = _first(series, SERIES_UID)
        if _is_uid(uid) and (not modality or _first(series, MODALITY) in (None, modality)):
            uids.append(uid)
    return uids


def _is_uid(value: str | None) -> TypeGuard[str]:
    return value is not None and 0 < len(value) <= 64 and bool(_UID.match(value))


def discover_dicomweb(client: DicomWebClient, query: DicomWebQuery) -> list[SourceItem]:
    """One lazily fetched item per selected instance; raises SourceError when the server
    cannot be searched or selects nothing."""
    instances = list_instances(client, query)
    if not instances:
        raise SourceError(
            f"DICOMweb server {client.base_url}: no instance matches "
            f"{query.study_params() or 'the query'}"
        )
    return [
        SourceItem(instance_url(client.base_url, *uids), fetch=_fetcher(client, uids))
        for uids in instances
    ]


def _fetcher(client: DicomWebClient, uids: tuple[str, str, str]) -> Callable[[], bytes]:
    """Download one instance when the pipeline reaches it (not at discovery)."""
    return lambda: client.retrieve(*uids)
