"""Compressed DICOM from real encoders: dcmtk (JPEG baseline/lossless, JPEG-LS, RLE) and
OpenJPEG through pydicom (JPEG 2000), decoded through pydicom's plugins, PHI removed.

dcmtk is a Debian package (``apt-get install dcmtk``; .ci/run installs it); without it the
dcmtk cases skip with that reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from cxrlabel.ingest.decode import DecodeError, decode_image
from cxrlabel.ingest.phantom import make_phantom_xray
from cxrlabel.ingest.pipeline import ingest
from cxrlabel.jobspec import load_job, resolve_job_path
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image as ImageRow
from cxrlabel.storage.models import Job
from fixtures_images import PHI_STRINGS, dicom_bytes, dicom_dataset

# name -> (encoder command, 8/12-bit input, transfer syntax written, lossless)
DCMTK = {
    "jpeg-baseline": (["dcmcjpeg", "+eb"], 8, "1.2.840.10008.1.2.4.50", False),
    "jpeg-lossless-sv1": (["dcmcjpeg", "+e1"], 12, "1.2.840.10008.1.2.4.70", True),
    "jpeg-lossless-sv1-8bit": (["dcmcjpeg", "+e1"], 8, "1.2.840.10008.1.2.4.70", True),
    "jpeg-lossless-p14": (["dcmcjpeg", "+el"], 12, "1.2.840.10008.1.2.4.57", True),
    "jpeg-ls-lossless": (["dcmcjpls"], 12, "1.2.840.10008.1.2.4.80", True),
    "jpeg-ls-near": (["dcmcjpls", "+en"], 12, "1.2.840.10008.1.2.4.81", False),
    "rle": (["dcmcrle"], 12, "1.2.840.10008.1.2.5", True),
}
# name -> (pydicom UID name, bits, lossless, encoder options)
OPENJPEG = {
    "jpeg2000-lossless": ("JPEG2000Lossless", 12, True, {}),
    "jpeg2000": ("JPEG2000", 12, False, {"j2k_cr": [8]}),
}
needs_dcmtk = pytest.mark.skipif(
    shutil.which("dcmcjpeg") is None, reason="dcmtk not installed (apt-get install dcmtk)"
)


def _original(seed: int, bits: int) -> pydicom.Dataset:
    pixels = np.asarray(make_phantom_xray(seed, (160, 128), pneumonia=bool(seed % 2)))
    if bits == 8:
        return dicom_dataset(pixels.astype(np.uint8))
    return dicom_dataset(pixels.astype(np.uint16) * 16, bits_stored=12)


def _encode(name: str, seed: int, folder: Path) -> tuple[Path, Path, str, bool]:
    """(original, compressed, transfer syntax, lossless) written by the real encoder."""
    folder.mkdir(parents=True, exist_ok=True)
    if name in DCMTK:
        command, bits, syntax, lossless = DCMTK[name]
    else:
        uid_name, bits, lossless, options = OPENJPEG[name]
        syntax = str(getattr(pydicom.uid, uid_name))
    original = folder / f"{name}-original.dcm"
    original.write_bytes(dicom_bytes(_original(seed, bits)))
    compressed = folder / f"{name}.dcm"
    if name in DCMTK:
        subprocess.run(
            [*command, str(original), str(compressed)], check=True, capture_output=True, timeout=60
        )
    else:
        ds = pydicom.dcmread(original)
        ds.compress(syntax, encoding_plugin="pylibjpeg", **options)
        ds.save_as(compressed)
    return original, compressed, syntax, lossless


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=needs_dcmtk) for n in DCMTK] + list(OPENJPEG)
)
def test_compressed_dicom_decodes_like_the_original(name: str, tmp_path: Path) -> None:
    original, compressed, syntax, lossless = _encode(name, 3, tmp_path)
    header = pydicom.dcmread(compressed, stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == syntax  # really compressed, as named
    assert header.PatientName == "Doe^Janet^Quincy"  # the encoder kept the PHI
    want = decode_image(original).pixels.astype(int)
    got = decode_image(compressed)
    assert got.source_format == "dicom" and got.pixels.shape == want.shape
    diff = np.abs(got.pixels.astype(int) - want)
    if lossless:
        assert diff.max() == 0
    else:  # lossy: close, but not the same image by accident
        assert 0 < diff.mean() < 4, diff.mean()


@needs_dcmtk
def test_compressed_dicoms_ingest_with_phi_removed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CXRLABEL_PSEUDONYM_SALT", raising=False)
    source = tmp_path / "incoming"
    names = [*DCMTK, *OPENJPEG]
    for seed, name in enumerate(names):
        _, compressed, _, _ = _encode(name, 10 + seed, tmp_path / "encode")
        (source / "PNEUMONIA").mkdir(parents=True, exist_ok=True)
        shutil.copy(compressed, source / "PNEUMONIA" / compressed.name)
    data_dir = tmp_path / "data"
    db = Database(f"sqlite:///{data_dir / 'db.sqlite3'}")
    spec = load_job(resolve_job_path(None))
    with db.session() as s:
        job = Job(name=spec.name, spec_toml="x", spec_sha256="0" * 64)
        s.add(job)
    summary = ingest(db, data_dir, job, spec, source, workers=0)
    assert summary.failed == [] and summary.ingested == len(names), summary
    with db.session() as s:
        formats = s.scalars(select(ImageRow.source_format)).all()
    db.dispose()
    assert formats == ["dicom"] * len(names)
    for path in data_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes().decode("latin-1")
            assert [v for v in PHI_STRINGS if v in blob] == [], path


def test_twelve_bit_jpeg_extended_is_decoded_or_refused_with_the_fix(tmp_path: Path) -> None:
    """GDCM refuses 12-bit JPEG Extended; only pylibjpeg-libjpeg (GPLv3, an opt-in extra)
    decodes it. Either it decodes, or the reason names that extra: never "malformed"."""
    if shutil.which("dcmcjpeg") is None:
        pytest.skip("dcmtk not installed (apt-get install dcmtk)")
    original = tmp_path / "o.dcm"
    original.write_bytes(dicom_bytes(_original(5, 12)))
    compressed = tmp_path / "ext.dcm"
    subprocess.run(
        ["dcmcjpeg", "+ee", str(original), str(compressed)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"
    try:
        import libjpeg  # noqa: F401 - pylibjpeg-libjpeg
    except ImportError:
        with pytest.raises(DecodeError, match=r"cxrlabel\[dicom-gpl\]"):
            decode_image(compressed)
    else:
        assert decode_image(compressed).pixels.shape == (128, 160)


@needs_dcmtk
def test_missing_decoders_give_the_install_hint(tmp_path: Path) -> None:
    """Before: a JPEG Lossless file without decoders said "pixel data cannot be decoded
    (RuntimeError)". In a fresh interpreter where the decoder packages cannot be imported
    (as on an install without them), the reason names the transfer syntax and the fix."""
    _, path, _, _ = _encode("jpeg-lossless-sv1", 7, tmp_path)
    script = textwrap.dedent(f"""
        import sys
        for name in ("gdcm", "libjpeg", "pylibjpeg"):
            sys.modules[name] = None  # "not installed"
        from cxrlabel.ingest.decode import DecodeError, decode_image
        try:
            decode_image({str(path)!r})
        except DecodeError as exc:
            print(exc)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert (
        "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection "
        "Value 1]) cannot be decoded: no decoder installed" in out
    ), out
    assert "python-gdcm" in out
