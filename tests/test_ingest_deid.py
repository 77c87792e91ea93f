"""DICOM de-identification: no planted identifier survives anywhere an ingest writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, PngImagePlugin
from sqlalchemy import inspect, select, text

from cxrlabel.ingest.deid import (
    PROFILE_NAME,
    annex_e_tags,
    deidentify,
    find_identifiers,
    load_or_create_salt,
    pseudonymise_patient_id,
)
from cxrlabel.ingest.phantom import make_phantom_xray
from cxrlabel.ingest.pipeline import ingest
from cxrlabel.jobspec import load_job, resolve_job_path
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image as ImageRow
from cxrlabel.storage.models import Job
from fixtures_images import (
    PHI,
    PHI_PRIVATE,
    PHI_STRINGS,
    dicom_bytes,
    dicom_dataset,
    dicom_truncated_pixels,
    jpeg_bytes,
    png_bytes,
    write,
)


def _phantom_dicom(seed: int, **attributes: object) -> pydicom.Dataset:
    pixels = np.asarray(make_phantom_xray(seed, 192), dtype=np.uint16) * 16
    return dicom_dataset(pixels, bits_stored=12, **attributes)


def test_annex_e_keywords_are_real_dicom_keywords() -> None:
    tags = annex_e_tags()
    assert len(tags) > 150
    assert [k for k, tag in tags.items() if tag is None] == []


def test_deidentify_removes_every_planted_identifier() -> None:
    ds = _phantom_dicom(1)
    before = find_identifiers(ds)
    assert len(before) >= 15  # the checker sees the planted PHI (so it can fail)
    assert any("private" in p for p in before) and any("Sequence" in p for p in before)
    result = deidentify(ds, b"salt")
    clean = result.dataset
    assert find_identifiers(clean) == []
    dump = str(clean) + repr(clean.file_meta)
    for value in PHI_STRINGS:
        assert value not in dump
    assert clean.PatientIdentityRemoved == "YES"
    assert clean.DeidentificationMethod == PROFILE_NAME
    assert clean.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert clean.PatientName == "" and clean.PatientID == ""
    assert clean.StudyInstanceUID != PHI["StudyInstanceUID"]
    assert result.patient_pseudonym == pseudonymise_patient_id(PHI["PatientID"], b"salt")
    # The clean copy still renders the same pixels.
    assert np.array_equal(clean.pixel_array, ds.pixel_array)


def test_pseudonym_salt_is_created_once_and_private(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CXRLABEL_PSEUDONYM_SALT", raising=False)
    salt = load_or_create_salt(tmp_path)
    assert len(salt) == 64 and load_or_create_salt(tmp_path) == salt
    assert (tmp_path / "secrets" / "pseudonym-salt").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("CXRLABEL_PSEUDONYM_SALT", "from-env")
    assert load_or_create_salt(tmp_path) == b"from-env"


def _dump_database(db: Database) -> str:
    """Every row of every table as text."""
    parts = []
    with db.engine.connect() as conn:
        for table in inspect(db.engine).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                parts.append(repr(tuple(row)))
    return "\n".join(parts)


def _files_containing(root: Path, needles: list[str], skip: set[Path]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if not path.is_file() or path in skip:
            continue
        data = path.read_bytes()
        for needle in needles:
            for encoded in (needle.encode("utf-8"), needle.encode("utf-16-le")):
                if encoded in data:
                    hits.append(f"{path.relative_to(root)}: {needle}")
    return hits


def test_no_phi_in_database_or_data_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CXRLABEL_PSEUDONYM_SALT", raising=False)
    src = tmp_path / "incoming"
    write(src / "PNEUMONIA" / "scan001.dcm", dicom_bytes(_phantom_dicom(1)))
    write(
        src / "PNEUMONIA" / "scan002.dcm",  # same patient, other image
        dicom_bytes(_phantom_dicom(2, BurnedInAnnotation="YES")),
    )
    write(src / "NORMAL" / "scan003.dcm", dicom_truncated_pixels())  # fails after parsing
    # A JPEG with identifying EXIF and a comment, and a PNG with a text chunk.
    exif = Image.Exif()
    exif[0x010E] = f"Patient {PHI['PatientName']} {PHI['PatientID']}"  # ImageDescription
    write(
        src / "NORMAL" / "photo1.jpg",
        jpeg_bytes(make_phantom_xray(3, 256), exif=exif.tobytes(), comment=PHI_PRIVATE),
    )
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", f"{PHI['InstitutionName']} {PHI['PatientBirthDate']}")
    write(src / "NORMAL" / "scan4.png", png_bytes(make_phantom_xray(4, 256), pnginfo=info))

    data_dir = tmp_path / "data"
    db = Database(f"sqlite:///{data_dir / 'db.sqlite3'}")
    spec = load_job(resolve_job_path(None))
    with db.session() as s:
        job = Job(name=spec.name, spec_toml="x", spec_sha256="0" * 64)
        s.add(job)
    summary = ingest(db, data_dir, job, spec, src)
    assert summary.ingested == 4 and len(summary.failed) == 1
    assert "malformed DICOM" in summary.failed[0].reason
    assert summary.burned_in == [str((src / "PNEUMONIA" / "scan002.dcm").resolve())]

    with db.session() as s:
        rows = s.scalars(select(ImageRow).where(ImageRow.source_format == "dicom")).all()
        assert len(rows) == 2
        assert rows[0].patient_id == rows[1].patient_id  # one child, one pseudonym
        assert rows[0].patient_id.startswith("dcm-")
        assert sorted(r.burned_in_annotation for r in rows) == [False, True]
    dump = _dump_database(db)
    assert "scan001.dcm" in dump  # the dump really contains the rows (admin-only source path)
    leaks = [v for v in PHI_STRINGS if v in dump]
    assert leaks == []
    db.dispose()
    # Every file under the data dir: database (+WAL), renditions, thumbnails, salt.
    assert any(data_dir.rglob("*_thumb.jpg"))
    assert _files_containing(data_dir, PHI_STRINGS, skip=set()) == []
    for rendition in data_dir.rglob("*.jpg"):
        with Image.open(rendition) as im:
            assert not im.getexif() and "comment" not in im.info and "icc_profile" not in im.info


@pytest.mark.parametrize("bad", ["StudyDate", "private", "sequence"])
def test_find_identifiers_catches_each_kind(bad: str) -> None:
    ds = pydicom.Dataset()
    ds.Rows = 4
    if bad == "StudyDate":
        ds.StudyDate = "20200101"
    elif bad == "private":
        ds.private_block(0x0011, "X", create=True).add_new(0x01, "LO", "v")
    else:
        item = pydicom.Dataset()
        item.PatientName = "A^B"
        ds.ReferencedPatientSequence = pydicom.Sequence([item])
    assert find_identifiers(ds)
