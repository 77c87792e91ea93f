"""Safe decoding of JPEG, PNG and DICOM files into 8-bit grayscale pixels.

One public entry point, :func:`decode_image`, used by ingest and by the model's ``predict``.
It never trusts a file: the format is recognised from the bytes (not the extension), sizes are
checked before any pixel is decompressed, and every failure becomes a :class:`DecodeError`
whose ``reason`` is one of our own short sentences. Reasons never quote values from the file,
because they are stored in the database and a DICOM value may be a patient's name.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cxrlabel.ingest import deid

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DICOM_MAGIC_OFFSET = 128  # 128-byte preamble, then "DICM"


class DecodeError(Exception):
    """A file that cannot be used as an image; ``reason`` is safe to store and show an admin."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    # The largest chest radiographs are about 4300 x 3500 (15 MP); 40 MP leaves room for
    # unusual detectors while keeping a decode under ~100 MB of memory.
    max_pixels: int = 40_000_000
    max_bytes: int = 256 * 1024 * 1024  # uncompressed 16-bit DICOM at 40 MP is ~80 MB
    min_side: int = 32  # smaller than this is an icon, not a radiograph


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class DicomInfo:
    """What ingest needs from a DICOM header, taken from the de-identified dataset only."""

    patient_pseudonym: str | None  # salted hash of PatientID; the id itself is never kept
    burned_in_annotation: bool
    photometric: str


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8, shape (height, width), 0 = black
    source_format: str  # jpeg | png | dicom
    dicom: DicomInfo | None = None

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def to_pil(self) -> Image.Image:
        """A fresh mode-L image: built from the pixel array, so it carries no metadata."""
        return Image.fromarray(self.pixels)


def sniff_format(head: bytes) -> str | None:
    """``jpeg``, ``png``, ``dicom`` or None, from the first 132 bytes of a file."""
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    return None


def read_limited(path: str | Path, limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of a file, refusing empty and oversized files before reading them."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise DecodeError("empty file (0 bytes)")
        if size > limits.max_bytes:
            raise DecodeError(
                f"file too large ({size / 2**20:.0f} MiB > {limits.max_bytes / 2**20:.0f} MiB)"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except IsADirectoryError:
        raise DecodeError("is a directory") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except OSError as exc:
        raise DecodeError(f"cannot read file ({type(exc).__name__})") from None


def decode_image(
    source: str | Path | bytes,
    *,
    limits: DecodeLimits = DEFAULT_LIMITS,
    pseudonym_salt: bytes | None = None,
) -> DecodedImage:
    """Decode a JPEG, PNG or DICOM (path or bytes) into 8-bit grayscale, or raise DecodeError.

    ``pseudonym_salt`` is needed only to pseudonymise a DICOM PatientID (see deid.py); without
    it a DICOM gets no patient pseudonym.
    """
    data = source if isinstance(source, bytes) else read_limited(source, limits)
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise DecodeError("file too large")
    kind = sniff_format(data[: DICOM_MAGIC_OFFSET + 4])
    if kind is None:
        raise DecodeError("not an image: content is not JPEG, PNG or DICOM")
    if kind == "dicom":
        pixels, info = _decode_dicom(data, limits, pseudonym_salt)
    else:
        pixels, info = _decode_raster(data, limits), None
    _check_dimensions(pixels.shape[1], pixels.shape[0], limits)
    return DecodedImage(pixels=np.ascontiguousarray(pixels), source_format=kind, dicom=info)


def _check_dimensions(width: int, height: int, limits: DecodeLimits) -> None:
    if width * height > limits.max_pixels:
        raise DecodeError(
            f"image too large ({width} x {height} = {width * height / 1e6:.0f} MP "
            f"> {limits.max_pixels / 1e6:.0f} MP)"
        )
    if min(width, height) < limits.min_side:
        raise DecodeError(f"image too small ({width} x {height} px)")


# --- JPEG / PNG ---------------------------------------------------------------------------------


def _decode_raster(data: bytes, limits: DecodeLimits) -> np.ndarray:
    with warnings.catch_warnings():
        # Pillow warns (not raises) between 1x and 2x its own limit: make that a refusal too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                # The header gives the size: refuse bombs before decompressing anything.
                _check_dimensions(im.width, im.height, limits)
                if getattr(im, "n_frames", 1) > 1:
                    raise DecodeError("multi-frame images are not supported")
                im.load()
                return _to_gray8(ImageOps.exif_transpose(im))
        except DecodeError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DecodeError("decompression bomb: declared size is far too large") from None
        except Image.UnidentifiedImageError:
            raise DecodeError("corrupt image: header cannot be read") from None
        except MemoryError:
            raise DecodeError("image too large to decode in memory") from None
        except Exception as exc:  # any decoder failure is a corrupt file
            raise DecodeError(f"corrupt or truncated image data ({_short(exc)})") from None


def _to_gray8(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _minmax_to_uint8(np.asarray(im, dtype=np.float64))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent areas become black, as a viewer on a dark background would show them.
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    if im.mode != "L":
        im = im.convert("L")
    return np.array(im, dtype=np.uint8)


def _short(exc: BaseException) -> str:
    """Exception type plus Pillow's message, which never contains file content."""
    text = str(exc).splitlines()[0][:80] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- DICOM --------------------------------------------------------------------------------------


def _decode_dicom(
    data: bytes, limits: DecodeLimits, salt: bytes | None
) -> tuple[np.ndarray, DicomInfo]:
    with warnings.catch_warnings():
        # pydicom warnings can quote header values (names, ids): never let them reach a log.
        warnings.simplefilter("ignore")
        return _decode_dicom_quietly(data, limits, salt)


def _decode_dicom_quietly(
    data: bytes, limits: DecodeLimits, salt: bytes | None
) -> tuple[np.ndarray, DicomInfo]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # its messages may quote values
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise DecodeError("malformed DICOM: not a valid DICOM file") from None
    except Exception as exc:  # only the type: messages may quote header values
        raise DecodeError(
            f"malformed DICOM: header cannot be parsed ({type(exc).__name__})"
        ) from None
    # From here on only the de-identified copy is used; the original dataset is dropped.
    try:
        result = deid.deidentify(ds, salt)
    except Exception as exc:
        raise DecodeError(f"malformed DICOM: cannot de-identify ({type(exc).__name__})") from None
    del ds
    clean = result.dataset
    pixels = _dicom_pixels(clean, limits)
    info = DicomInfo(
        patient_pseudonym=result.patient_pseudonym,
        burned_in_annotation=result.burned_in_annotation,
        photometric=str(clean.get("PhotometricInterpretation", "")),
    )
    return pixels, info


def _dicom_pixels(ds, limits: DecodeLimits) -> np.ndarray:  # pydicom Dataset
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds:
        raise DecodeError("malformed DICOM: no pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise DecodeError("malformed DICOM: image size attributes missing or invalid") from None
    _check_dimensions(cols, rows, limits)
    if frames > 1:
        raise DecodeError(f"multi-frame DICOM ({frames} frames) is not supported")
    _check_decoder(ds)
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise DecodeError("image too large to decode in memory") from None
    except Exception as exc:
        raise _pixel_error(ds, exc) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour (e.g. secondary capture): luminance, no windowing
        if arr.shape[-1] != 3:
            raise DecodeError("unsupported DICOM pixel layout")
        rgb = arr.astype(np.float64)
        return _minmax_to_uint8(rgb @ np.array([0.299, 0.587, 0.114]))
    if arr.shape != (rows, cols):
        raise DecodeError("malformed DICOM: pixel data does not match Rows x Columns")
    try:
        values = apply_modality_lut(arr, ds).astype(np.float64)
        out = _voi_to_uint8(values, ds, apply_voi_lut)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(
            f"malformed DICOM: invalid LUT or window ({type(exc).__name__})"
        ) from None
    if photometric == "MONOCHROME1":  # low values are white in MONOCHROME1
        out = 255 - out
    return out


# Compressed transfer syntaxes are decoded by pydicom's plugins: python-gdcm (JPEG baseline,
# extended 8-bit, lossless, JPEG-LS, JPEG 2000), pylibjpeg-openjpeg (JPEG 2000), pylibjpeg-rle
# and pydicom itself (RLE), all runtime dependencies. 12-bit JPEG Extended is the one syntax
# GDCM refuses; pylibjpeg-libjpeg decodes it but is GPLv3, so it stays an opt-in extra.
INSTALL_HINT = "pip install 'cxrlabel' again to get its DICOM decoders (python-gdcm, pylibjpeg)"
SYNTAX_HINTS = {
    "1.2.840.10008.1.2.4.51": "12-bit JPEG Extended needs pylibjpeg-libjpeg (GPLv3): "
    "pip install 'cxrlabel[dicom-gpl]'",
}


def _syntax(ds) -> tuple[str, str]:  # ds: a pydicom Dataset
    """(UID, name) of the transfer syntax; names come from the standard, never the file."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        return "", "unknown transfer syntax"
    return str(uid), (uid.name if uid.is_transfer_syntax else "unknown transfer syntax")


def _check_decoder(ds) -> None:  # ds: a pydicom Dataset
    """Refuse early, naming the fix, when no installed plugin can decode this syntax."""
    from pydicom.pixels import get_decoder

    uid, name = _syntax(ds)
    if not uid:
        return  # pydicom assumes a default; let it try
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise DecodeError(f"DICOM transfer syntax {name} is not supported") from None
    if not decoder.is_available:
        hint = SYNTAX_HINTS.get(uid, INSTALL_HINT)
        raise DecodeError(
            f"DICOM transfer syntax {name} cannot be decoded: no decoder installed ({hint})"
        )


def _pixel_error(ds, exc: Exception) -> DecodeError:  # ds: a pydicom Dataset
    """Why the pixels failed, without quoting the file: a decoder that refuses this kind of
    image (pydicom: "... does not support ...") is not a damaged file."""
    uid, name = _syntax(ds)
    text = str(exc)
    if isinstance(exc, RuntimeError) and "does not support" in text:
        hint = SYNTAX_HINTS.get(uid, "no installed decoder handles this variant")
        return DecodeError(
            f"DICOM transfer syntax {name} cannot be decoded for this image ({hint})"
        )
    return DecodeError(
        f"malformed DICOM: pixel data cannot be decoded ({type(exc).__name__}, {name})"
    )


def _voi_to_uint8(values: np.ndarray, ds, apply_voi_lut) -> np.ndarray:
    """VOI LUT sequence if present, else the first window, else the full range (PS3.3 C.11.2)."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return _minmax_to_uint8(apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64))
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        center = float(center[0] if _is_multi(center) else center)
        width = float(width[0] if _is_multi(width) else width)
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        if width > 0:
            return window_to_uint8(values, center, width, function)
    return _minmax_to_uint8(values)


def _is_multi(value) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def window_to_uint8(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """DICOM window (PS3.3 C.11.2.1.2) mapped straight to 0..255."""
    if function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        out = (values - (center - width / 2.0)) / width * 255.0
    else:  # LINEAR: the standard's c - 0.5 and w - 1 offsets
        width = max(width, 1.0)
        out = ((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
