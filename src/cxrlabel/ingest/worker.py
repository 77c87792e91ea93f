"""The CPU-heavy part of ingesting one file; runs in a worker process (or inline).

Kept free of database and CLI imports so that spawned workers start quickly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cxrlabel.ingest.decode import DEFAULT_LIMITS, DecodeError, DecodeLimits, decode_image
from cxrlabel.ingest.phash import phash
from cxrlabel.ingest.renditions import make_renditions

SIGNATURE_SIDE = 64  # pixels compared to confirm a near duplicate (squashed to a square)


@dataclass(frozen=True)
class Processed:
    """Everything the main process needs about one decoded image (no source metadata)."""

    source_format: str
    width: int
    height: int
    pixel_sha256: str
    phash: int
    signature: np.ndarray  # uint8 SIGNATURE_SIDE x SIGNATURE_SIDE
    rendition: bytes
    thumb: bytes
    burned_in_annotation: bool
    dicom_pseudonym: str | None


def signature(im: Image.Image) -> np.ndarray:
    square = im.convert("L").resize(
        (SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0
    )
    return np.asarray(square, dtype=np.uint8)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def pixel_digest(pixels: np.ndarray) -> str:
    h = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}:".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def process_bytes(
    data: bytes, salt: bytes | None, limits: DecodeLimits = DEFAULT_LIMITS
) -> Processed | str:
    """A :class:`Processed` or, for a file that cannot be used, the reason as a string."""
    try:
        decoded = decode_image(data, limits=limits, pseudonym_salt=salt)
    except DecodeError as exc:
        return exc.reason
    pixels = decoded.pixels
    rendition, thumb = make_renditions(pixels)
    im = decoded.to_pil()
    return Processed(
        source_format=decoded.source_format,
        width=decoded.width,
        height=decoded.height,
        pixel_sha256=pixel_digest(pixels),
        phash=phash(im),
        signature=signature(im),
        rendition=rendition,
        thumb=thumb,
        burned_in_annotation=bool(decoded.dicom and decoded.dicom.burned_in_annotation),
        dicom_pseudonym=decoded.dicom.patient_pseudonym if decoded.dicom else None,
    )


def process_safely(data: bytes, salt: bytes | None, limits: DecodeLimits) -> Processed | str:
    """Like process_bytes, but an unexpected error is a reason too: one file never stops a run."""
    try:
        return process_bytes(data, salt, limits)
    except MemoryError:
        return "image too large to process in memory"
    except Exception as exc:  # only the type: the message may quote file content
        return f"internal error while processing ({type(exc).__name__})"
