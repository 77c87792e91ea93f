"""Safe decoding: bad files give typed, safe reasons; DICOM grey levels come out right."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxrlabel.ingest.decode import DecodeError, decode_image, window_to_uint8
from cxrlabel.ingest.phantom import MARK, make_phantom_xray
from fixtures_images import (
    corrupt_jpeg,
    dicom_bytes,
    dicom_dataset,
    dicom_truncated_pixels,
    huge_jpeg_header,
    jpeg_bytes,
    malformed_dicom,
    png_bytes,
    truncated_png,
    write,
    zero_png,
)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (corrupt_jpeg, "corrupt"),
        (truncated_png, "truncated"),
        (lambda: b"", "empty file"),
        (lambda: b"patient list\nDoe, Jane\n", "not an image"),
        (lambda: zero_png(10_000, 10_000), "decompression bomb"),
        (lambda: zero_png(9_000, 5_000), "image too large"),
        (huge_jpeg_header, "decompression bomb"),
        (lambda: zero_png(20, 400), "too small"),
        (malformed_dicom, "malformed DICOM"),
        (dicom_truncated_pixels, "malformed DICOM"),
    ],
    ids=[
        "corrupt-jpeg",
        "truncated-png",
        "zero-bytes",
        "text-as-jpeg",
        "bomb",
        "huge",
        "huge-header",
        "tiny",
        "malformed-dicom",
        "dicom-short-pixels",
    ],
)
def test_bad_files_raise_decode_error_with_reason(tmp_path, make, reason) -> None:
    path = write(tmp_path / "file.jpeg", make())
    with pytest.raises(DecodeError) as info:
        decode_image(path)
    assert reason in info.value.reason
    with pytest.raises(DecodeError):  # bytes in, same verdict
        decode_image(path.read_bytes()) if path.stat().st_size else decode_image(b"")


def test_missing_file_is_a_decode_error(tmp_path) -> None:
    with pytest.raises(DecodeError, match="file not found"):
        decode_image(tmp_path / "nope.png")


def test_decode_reasons_never_quote_dicom_values() -> None:
    with pytest.raises(DecodeError) as info:
        decode_image(dicom_truncated_pixels())
    assert "Doe" not in info.value.reason and "MRN" not in info.value.reason


def test_jpeg_png_and_modes_become_8bit_gray() -> None:
    phantom = make_phantom_xray(7, (300, 240))
    for data in (
        jpeg_bytes(phantom),
        png_bytes(phantom),
        png_bytes(phantom.convert("RGB")),
        png_bytes(phantom.convert("RGBA")),
        jpeg_bytes(phantom.convert("CMYK")),
    ):
        decoded = decode_image(data)
        assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (240, 300)
        diff = np.abs(decoded.pixels.astype(int) - np.asarray(phantom, dtype=int)).mean()
        assert diff < 3.0
    assert decode_image(png_bytes(phantom)).source_format == "png"


def test_16bit_png_is_rescaled_to_full_range() -> None:
    ramp = np.tile(np.linspace(1000, 3000, 256).astype(np.uint16), (64, 1))
    im = Image.fromarray(ramp)
    out = decode_image(png_bytes(im)).pixels
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)


def test_exif_orientation_is_applied() -> None:
    phantom = make_phantom_xray(8, (320, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(jpeg_bytes(phantom, exif=exif.tobytes()))
    assert decoded.pixels.shape == (320, 200)


# --- DICOM grey levels ---------------------------------------------------------------------------


def _ramp(lo: int, hi: int) -> np.ndarray:
    return np.tile(np.linspace(lo, hi, 256).round().astype(np.uint16), (64, 1))


def test_dicom_16bit_rescale_without_window_uses_full_range() -> None:
    ds = dicom_dataset(_ramp(200, 3800), bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024)
    out = decode_image(dicom_bytes(ds)).pixels
    assert out.dtype == np.uint8 and out.shape == (64, 256)
    assert out[0, 0] == 0 and out[0, -1] == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)
    assert abs(int(out[0, 128]) - 128) <= 2  # linear: the middle value lands mid-grey


def test_dicom_window_clips_outside_and_stretches_inside() -> None:
    # Stored 0..4095, rescale to -1024..3071; window centre 500 width 400 -> 300..700 visible.
    ds = dicom_dataset(
        _ramp(0, 4095),
        bits_stored=12,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=500,
        WindowWidth=400,
    )
    out = decode_image(dicom_bytes(ds)).pixels[0]
    values = np.linspace(0, 4095, 256).round() - 1024
    assert np.all(out[values < 290] == 0) and np.all(out[values > 710] == 255)
    middle = out[(values > 320) & (values < 680)]
    assert middle.min() > 0 and middle.max() < 255 and np.all(np.diff(middle.astype(int)) >= 0)
    assert np.array_equal(
        window_to_uint8(np.array([300.0, 500.0, 700.0]), 500, 400),
        np.array([0, 128, 255], dtype=np.uint8),
    )


def test_dicom_multivalued_window_uses_the_first() -> None:
    ds = dicom_dataset(
        _ramp(0, 4095), bits_stored=12, WindowCenter=[1000, 3000], WindowWidth=[200, 200]
    )
    out = decode_image(dicom_bytes(ds)).pixels[0]
    values = np.linspace(0, 4095, 256).round()
    assert np.all(out[values > 1200] == 255)


def test_dicom_voi_lut_sequence_wins_over_window() -> None:
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 12]
    lut.LUTData = (4095 - np.arange(4096)).astype(np.uint16).tolist()  # an inverting LUT
    lut["LUTData"].VR = "US"
    ds = dicom_dataset(
        _ramp(0, 4095),
        bits_stored=12,
        WindowCenter=100,
        WindowWidth=10,
        VOILUTSequence=Sequence([lut]),
    )
    out = decode_image(dicom_bytes(ds)).pixels[0]
    assert out[0] == 255 and out[-1] == 0  # the LUT (inverting), not the window, was applied
    assert np.all(np.diff(out.astype(int)) <= 0)


def test_dicom_monochrome1_is_inverted() -> None:
    phantom = np.asarray(make_phantom_xray(11, 128), dtype=np.uint16) * 16  # 12-bit range
    mono2 = decode_image(dicom_bytes(dicom_dataset(phantom, bits_stored=12))).pixels
    stored_inverted = (4095 - phantom).astype(np.uint16)  # how a MONOCHROME1 device stores it
    mono1 = decode_image(
        dicom_bytes(dicom_dataset(stored_inverted, photometric="MONOCHROME1", bits_stored=12))
    ).pixels
    assert np.abs(mono1.astype(int) - mono2.astype(int)).max() <= 1
    # Lungs (dark in the phantom) stay dark after decoding the MONOCHROME1 file.
    assert mono1[61, 42] < 100 < mono1[64, 64]


def test_dicom_burned_in_annotation_and_pseudonym() -> None:
    ds = dicom_dataset(_ramp(0, 255).astype(np.uint8), BurnedInAnnotation="YES")
    decoded = decode_image(dicom_bytes(ds), pseudonym_salt=b"k1")
    assert decoded.source_format == "dicom"
    assert decoded.dicom is not None and decoded.dicom.burned_in_annotation
    pseudonym = decoded.dicom.patient_pseudonym
    assert pseudonym and pseudonym.startswith("dcm-") and "7734215" not in pseudonym
    again = decode_image(dicom_bytes(ds), pseudonym_salt=b"k1").dicom
    other_salt = decode_image(dicom_bytes(ds), pseudonym_salt=b"k2").dicom
    assert again.patient_pseudonym == pseudonym != other_salt.patient_pseudonym
    clean = dicom_dataset(_ramp(0, 255).astype(np.uint8), with_phi=False, BurnedInAnnotation="NO")
    assert not decode_image(dicom_bytes(clean)).dicom.burned_in_annotation


def test_phantom_is_deterministic_marked_and_pneumonia_is_cloudier() -> None:
    a, b = make_phantom_xray(5, 256), make_phantom_xray(5, 256)
    assert a.mode == "L" and a.size == (256, 256)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(make_phantom_xray(6, 256)))
    assert MARK == "SYNTHETIC PHANTOM"
    top = np.asarray(a)[:20, :150]
    assert (top > 200).sum() > 30  # the burned-in text on a dark background
    normal = np.asarray(make_phantom_xray(9, 256), dtype=float)
    sick = np.asarray(make_phantom_xray(9, 256, pneumonia=True), dtype=float)
    lungs = (slice(80, 180), slice(40, 216))
    assert sick[lungs].mean() > normal[lungs].mean() + 5
