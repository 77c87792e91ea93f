"""Near-duplicate rule, shared by ingest and any other stage (e.g. gold-bank checks).

Two stages, thresholds measured on the 5,206 Kermany images (benchmarks/phash_threshold.py,
docs/ingest.md): re-encoded/resized copies are within pHash distance 4 and a 64x64 mean
absolute difference of 3.7; different images (same patient or not) can be as close as pHash 2
but never closer than a difference of 10.3. So pHash only shortlists; the pixels decide.
pHash alone cannot tell a copy from another child's X-ray.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cxrlabel.ingest.phash import hamming
from cxrlabel.ingest.worker import mean_abs_diff, signature

NEAR_DUP_MAX_PHASH = 8  # shortlist: twice the largest distance measured for a copy
NEAR_DUP_MAX_MAD = 6.0  # grey levels (0-255) at 64x64: copies <= 3.7, different >= 10.3


def signature_from_file(path: str | Path) -> np.ndarray:
    """The 64x64 signature of a stored rendition or thumbnail."""
    with Image.open(path) as im:
        return signature(im)


def is_near_duplicate(phash_a: int, phash_b: int, sig_a: np.ndarray, sig_b: np.ndarray) -> bool:
    return (
        hamming(phash_a, phash_b) <= NEAR_DUP_MAX_PHASH
        and mean_abs_diff(sig_a, sig_b) <= NEAR_DUP_MAX_MAD
    )
