"""Web renditions and thumbnails, written so that a crash never leaves a half-written file.

Files are named by the image's opaque ``public_id`` (never the source name), under
``renditions/<job>/<first two characters>/``, and encoded from a bare pixel array, so no EXIF,
ICC profile, comment or text chunk of the source can be carried over.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

RENDITION_MAX_SIDE = 1024
THUMB_MAX_SIDE = 256
RENDITION_QUALITY = 90
THUMB_QUALITY = 85
RENDITIONS_DIR = "renditions"
TMP_SUFFIX = ".tmp"
# What our own files look like: anything else in a job's folder is never touched.
OUR_FILE = re.compile(r"^(?P<pid>[A-Za-z0-9_\-]{16,32}?)(?:_thumb)?\.jpg(?:\.tmp[\w.\-]*)?$")


def shrink(pixels: np.ndarray, max_side: int) -> Image.Image:
    """A fresh mode-L image whose longest side is at most ``max_side`` (never upscaled)."""
    im = Image.fromarray(pixels)
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return im


def encode_jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    # Only pixels are passed: Pillow would otherwise copy icc_profile/comment from im.info.
    Image.fromarray(np.asarray(im)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_renditions(pixels: np.ndarray) -> tuple[bytes, bytes]:
    """(web rendition, thumbnail) as JPEG bytes."""
    web = shrink(pixels, RENDITION_MAX_SIDE)
    thumb = web.copy()
    thumb.thumbnail((THUMB_MAX_SIDE, THUMB_MAX_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return encode_jpeg(web, RENDITION_QUALITY), encode_jpeg(thumb, THUMB_QUALITY)


def job_dir(job_name: str) -> Path:
    return Path(RENDITIONS_DIR) / job_name


def relative_paths(job_name: str, public_id: str) -> tuple[str, str]:
    """(rendition, thumbnail) paths relative to the data dir, as stored in the database."""
    folder = job_dir(job_name) / public_id[:2]
    return (folder / f"{public_id}.jpg").as_posix(), (folder / f"{public_id}_thumb.jpg").as_posix()


def write_atomic(path: Path, data: bytes, *, make_dirs: bool = True) -> None:
    """Write to a temporary name in the same folder, then rename: readers see all or nothing."""
    if make_dirs:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_SUFFIX}{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly([tmp])
        raise


def remove_quietly(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def sweep_orphans(data_dir: Path, job_name: str, known_public_ids: set[str]) -> list[Path]:
    """Delete our temp files and files of images that have no database row (left by a kill)."""
    removed: list[Path] = []
    root = data_dir / job_dir(job_name)
    if not root.is_dir():
        return removed
    for path in root.glob("*/*"):
        match = OUR_FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        if TMP_SUFFIX in path.name or match["pid"] not in known_public_ids:
            remove_quietly([path])
            removed.append(path)
    return removed
