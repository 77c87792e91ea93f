"""Generators of test images: good phantoms, bad files, and DICOMs full of fake PHI.

Reusable by any test (``from fixtures_images import ...``; tests/ is on sys.path via conftest's
rootdir). Every generator writes only to the path it is given.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from cxrlabel.ingest.phantom import make_phantom_xray

# Fake identifiers planted in DICOM headers; none may appear anywhere after ingest.
PHI = {
    "PatientName": "Doe^Janet^Quincy",
    "PatientID": "MRN-7734215",
    "PatientBirthDate": "19870412",
    "StudyDate": "20240115",
    "StudyTime": "093012",
    "AcquisitionDateTime": "20240115093512",
    "InstitutionName": "Saint Exampleton Childrens Hospital",
    "InstitutionAddress": "12 Elmwood Street Springfield",
    "ReferringPhysicianName": "Housely^Gregor",
    "PerformingPhysicianName": "Cuddington^Lisa",
    "OperatorsName": "Wilsonby^James",
    "AccessionNumber": "ACC99887766",
    "StudyID": "STUDY-4471",
    "StudyInstanceUID": "1.2.826.0.1.3680043.2.1125.7734215.1",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.2.1125.7734215.2",
    "SOPInstanceUID": "1.2.826.0.1.3680043.2.1125.7734215.3",
    "ImageComments": "bed 7 Janet Quincy follow-up",
    "StationName": "XRAY-ELMWOOD",
}
PHI_IN_SEQUENCE = {"PatientName": "Doe^Jane^Sequencia", "PatientID": "OTHER-ID-5566"}
PHI_PRIVATE = "Secret-Private-Value-PV8812Q"
PHI_STRINGS = (
    [v.replace("^", " ") for v in PHI.values()]
    + list(PHI.values())
    + list(PHI_IN_SEQUENCE.values())
    + [PHI_PRIVATE, "Janet", "Quincy", "7734215", "Elmwood", "Sequencia", "PV8812Q"]
)
# The leak scan reads raw database pages, where adjacent fields touch with no separator: a
# timestamp ending "...52.254881" followed by "2026-..." contains "8812". A short digits-only
# needle therefore matches by chance (CI failed once on exactly that); keep such needles long.
MIN_DIGITS_ONLY_NEEDLE = 6
assert all(len(v) >= MIN_DIGITS_ONLY_NEEDLE for v in PHI_STRINGS if v.isdigit()), PHI_STRINGS


def jpeg_bytes(im: Image.Image, quality: int = 90, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def png_bytes(im: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def corrupt_jpeg() -> bytes:
    """A JPEG whose Huffman table is overwritten: the decoder rejects it."""
    good = bytearray(jpeg_bytes(make_phantom_xray(1, 256)))
    dht = good.find(b"\xff\xc4")
    good[dht + 4 : dht + 40] = b"\xff" * 36
    return bytes(good)


def truncated_png() -> bytes:
    data = png_bytes(make_phantom_xray(2, 256))
    return data[: len(data) // 2]


def zero_png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of zeros, built without allocating the pixels.

    At 10000 x 10000 it is a decompression bomb: ~100 KB on disk, 100 MB once decoded.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def huge_jpeg_header(width: int = 60000, height: int = 60000) -> bytes:
    """A real small JPEG whose frame header is patched to claim enormous dimensions."""
    data = bytearray(jpeg_bytes(make_phantom_xray(3, 64)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def dicom_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    with_phi: bool = True,
    **attributes: object,
) -> Dataset:
    """A DX-like DICOM dataset around ``pixels`` (uint8 or uint16), optionally full of PHI."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    ds.file_meta.MediaStorageSOPInstanceUID = PHI["SOPInstanceUID"]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if with_phi:
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        other = Dataset()
        other.PatientName = PHI_IN_SEQUENCE["PatientName"]
        other.PatientID = PHI_IN_SEQUENCE["PatientID"]
        ds.OtherPatientIDsSequence = Sequence([other])
        ref = Dataset()
        ref.PatientName = PHI_IN_SEQUENCE["PatientName"]
        ref.StudyDate = PHI["StudyDate"]
        ds.RequestAttributesSequence = Sequence([ref])
        block = ds.private_block(0x0009, "ACME IMAGING", create=True)
        block.add_new(0x01, "LO", PHI_PRIVATE)
        block.add_new(0x02, "DA", PHI["StudyDate"])
        ds.add_new(0x60000022, "LO", "overlay Janet Quincy")  # OverlayDescription
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def malformed_dicom() -> bytes:
    """Preamble and DICM magic, then garbage: looks like DICOM, cannot be parsed."""
    return b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4


def dicom_truncated_pixels() -> bytes:
    """A DICOM full of PHI whose pixel data is shorter than Rows x Columns says."""
    ds = dicom_dataset(np.zeros((64, 64), dtype=np.uint16))
    ds.Rows, ds.Columns = 512, 512
    return dicom_bytes(ds)
