"""Perceptual hash (DCT pHash) and a vectorised nearest-neighbour search over many hashes.

pHash (Zauner 2010, as in the ``imagehash`` library): shrink the image to 32x32, take the 2-D
DCT, keep the 8x8 lowest frequencies and set one bit per coefficient above their median. The
image is squashed to a square first, so a resized copy (any aspect-preserving scale) hashes the
same as the original and re-encoding only flips a few bits.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dctn

HASH_SIZE = 8
HIGHFREQ_FACTOR = 4  # the DCT input is 32x32


def phash(image: Image.Image | np.ndarray) -> int:
    """The 64-bit pHash of a grayscale image (PIL image or uint8 array)."""
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    side = HASH_SIZE * HIGHFREQ_FACTOR
    # reducing_gap: a box pre-shrink makes large images fast without changing the result much.
    small = im.convert("L").resize((side, side), Image.Resampling.LANCZOS, reducing_gap=4.0)
    pixels = np.asarray(small, dtype=np.float64)
    low = dctn(pixels, type=2, norm="ortho")[:HASH_SIZE, :HASH_SIZE]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def to_hex(value: int) -> str:
    return f"{value:016x}"


def from_hex(text: str) -> int:
    return int(text, 16)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class PhashIndex:
    """Hashes with an id each; ``nearest`` scans them all at once (XOR + popcount in NumPy).

    A linear scan is simple and fast enough: 100,000 hashes take well under a millisecond.
    """

    def __init__(self) -> None:
        self._hashes = np.zeros(1024, dtype=np.uint64)
        self._ids: list[int] = []

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item_id: int, value: int) -> None:
        n = len(self._ids)
        if n == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros(n, dtype=np.uint64)])
        self._hashes[n] = np.uint64(value)
        self._ids.append(item_id)

    def distances(self, value: int) -> np.ndarray:
        """Hamming distance from ``value`` to every hash, in insertion order."""
        xor = self._hashes[: len(self._ids)] ^ np.uint64(value)
        return np.bitwise_count(xor).astype(np.int64)

    def within(self, value: int, max_distance: int) -> list[tuple[int, int]]:
        """``(id, distance)`` of every hash within ``max_distance``, nearest first."""
        if not self._ids:
            return []
        dist = self.distances(value)
        hits = np.flatnonzero(dist <= max_distance)
        order = hits[np.argsort(dist[hits], kind="stable")]
        return [(self._ids[i], int(dist[i])) for i in order]
