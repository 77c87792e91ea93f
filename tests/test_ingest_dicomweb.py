"""A real PACS as a source: Orthanc with its DICOMweb plugin (Debian ``orthanc``,
``orthanc-dicomweb``; .ci/run installs them), started on a free loopback port with its own
storage, loaded with synthetic DICOMs full of fake PHI; ``cxrlabel ingest dicomweb+http://...``
pulls them over QIDO-RS/WADO-RS, de-identified, and a re-run fetches only new instances.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.ingest.dicomweb import DecodeError, multipart_parts
from cxrlabel.ingest.phantom import make_phantom_xray
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image
from fixtures_images import PHI_STRINGS, dicom_bytes, dicom_dataset
from live_server import free_port as _free_port
from test_ingest_deid import _dump_database, _files_containing

ORTHANC = shutil.which("Orthanc") or (
    "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
)
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
ROOT_UID = "1.2.826.0.1.3680043.10.543"  # our test UIDs (not the PHI fixture's)


def _plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if ORTHANC is None or _plugin() is None:
        pytest.skip(
            "Orthanc with DICOMweb not installed (apt-get install orthanc orthanc-dicomweb)"
        )
    folder = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    config = {
        "Name": "cxrlabel-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": port,
        "DicomPort": 0,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "log").open("w")
    process = subprocess.Popen(
        [ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process, folder / "log")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_ready(base: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Orthanc exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/system", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail("Orthanc did not answer within 60 s")


def _upload(
    base: str, n: int, study: int, *, modality: str = "DX", study_date: str = "20240115"
) -> str:
    """Store one synthetic instance with fake PHI; returns its SOPInstanceUID."""
    pixels = np.asarray(make_phantom_xray(100 + n, (192, 160), pneumonia=bool(n % 2)))
    ds = dicom_dataset(
        pixels.astype(np.uint16) * 16,
        bits_stored=12,
        StudyInstanceUID=f"{ROOT_UID}.{study}",
        SeriesInstanceUID=f"{ROOT_UID}.{study}.{1 if modality == 'DX' else 2}",
        SOPInstanceUID=f"{ROOT_UID}.{study}.9.{n}",
        Modality=modality,
        StudyDate=study_date,
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    response = httpx.post(f"{base}/instances", content=dicom_bytes(ds), timeout=30)
    assert response.status_code == 200, response.text
    return ds.SOPInstanceUID


def _ingest(data_dir: Path, source: str, *options: str):
    return CliRunner().invoke(
        app, ["--data-dir", str(data_dir), "ingest", source, "--workers", "0", *options]
    )


def _sources(data_dir: Path) -> list[str]:
    db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
    try:
        with db.session() as s:
            return sorted(s.scalars(select(Image.source_path)))
    finally:
        db.dispose()


def test_pacs_ingest_deidentified_and_incremental(
    orthanc: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("CXRLABEL_PSEUDONYM_SALT", raising=False)
    first = [_upload(orthanc, 0, 1), _upload(orthanc, 1, 1), _upload(orthanc, 2, 2)]
    _upload(orthanc, 3, 3, modality="CT")  # another modality: filtered out
    source = f"dicomweb+{orthanc}/dicom-web/"
    data_dir = tmp_path / "data"

    result = _ingest(data_dir, source, "--modality", "DX")
    assert result.exit_code == 0, result.output
    assert "downloaded 3 instance(s)" in result.output
    paths = _sources(data_dir)
    assert len(paths) == 3 and all(
        p.startswith(f"dicomweb+{orthanc}/dicom-web/studies/") for p in paths
    )
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == sorted(first)  # traceable, admin-only

    # De-identified on the way in: no planted identifier in the database or the data dir.
    db = Database(f"sqlite:///{data_dir / 'cxrlabel.sqlite3'}")
    dump = _dump_database(db)
    db.dispose()
    assert [v for v in PHI_STRINGS if v in dump] == []
    assert _files_containing(data_dir, PHI_STRINGS, skip=set()) == []
    assert any(data_dir.rglob("*.jpg"))
    assert _files_containing(data_dir / "renditions", [ROOT_UID], set()) == []

    # Incremental: two new instances, only they are downloaded.
    _upload(orthanc, 4, 2)
    _upload(orthanc, 5, 4)
    again = _ingest(data_dir, source, "--modality", "DX")
    assert again.exit_code == 0, again.output
    assert "downloaded 2 instance(s); 3 pulled before were not fetched again" in again.output
    assert len(_sources(data_dir)) == 5
    unchanged = _ingest(data_dir, source, "--modality", "DX")
    assert "downloaded 0 instance(s); 5 pulled before" in unchanged.output


def test_pacs_filters_by_date_and_study(orthanc: str, tmp_path: Path) -> None:
    late = _upload(orthanc, 20, 20, study_date="20250301")
    result = _ingest(tmp_path / "a", f"dicomweb+{orthanc}/dicom-web", "--since", "2025-01-01")
    assert result.exit_code == 0, result.output
    assert [p.rsplit("/", 1)[1] for p in _sources(tmp_path / "a")] == [late]
    result = _ingest(tmp_path / "b", f"dicomweb+{orthanc}/dicom-web", "--study", f"{ROOT_UID}.1")
    assert result.exit_code == 0, result.output
    assert all(f"/studies/{ROOT_UID}.1/" in p for p in _sources(tmp_path / "b"))
    none = _ingest(tmp_path / "c", f"dicomweb+{orthanc}/dicom-web", "--until", "2000-01-01")
    assert none.exit_code == 2 and "no instance matches" in none.output


def test_unreachable_server_and_bad_usage_are_clear(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    result = _ingest(tmp_path, f"dicomweb+http://127.0.0.1:{port}/dicom-web")
    assert result.exit_code == 2 and "unreachable" in result.output
    result = _ingest(tmp_path, "dicomweb+ftp://pacs/dicom-web")
    assert result.exit_code == 2 and "dicomweb+http://HOST:PORT/PATH" in result.output
    folder = tmp_path / "images"
    folder.mkdir()
    result = _ingest(tmp_path, str(folder), "--modality", "DX")
    assert result.exit_code == 2 and "dicomweb+http:// source only" in result.output


def test_multipart_parsing() -> None:
    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + b"DICM\r\nbytes" + b"\r\n--b1--\r\n"
    assert multipart_parts(body, 'multipart/related; type="application/dicom"; boundary=b1') == [
        b"DICM\r\nbytes"
    ]
    with pytest.raises(DecodeError, match="not a multipart"):
        multipart_parts(b"<html>", "text/html")
