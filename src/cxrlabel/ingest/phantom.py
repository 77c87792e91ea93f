"""Synthetic chest X-ray *phantoms* for tests and the offline demo. Not medical images.

Each phantom is clearly marked: the words "SYNTHETIC PHANTOM" are burned into the pixels. It has
the rough anatomy a viewer expects (two dark lung fields, a bright mediastinum and heart shadow,
spine, ribs, clavicles, soft tissue), and optionally cloudy patches standing in for pneumonia.
The same seed always gives the same image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

MARK = "SYNTHETIC PHANTOM"
RENDER_SIDE = 512


def make_phantom_xray(
    seed: int, size: int | tuple[int, int] = 512, *, pneumonia: bool = False
) -> Image.Image:
    """A mode-L phantom of ``size`` (side or (width, height)), marked SYNTHETIC PHANTOM."""
    out_width, out_height = (size, size) if isinstance(size, int) else size
    # Anatomy is drawn at most RENDER_SIDE px wide and upscaled: fast at any output size.
    scale = min(1.0, RENDER_SIDE / max(out_width, out_height))
    width, height = max(8, round(out_width * scale)), max(8, round(out_height * scale))
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / width - 0.5, y / height - 0.5  # centred unit coordinates

    # Each child is different: body size and position, lung shape, exposure, tissue texture.
    du, dv = rng.uniform(-0.04, 0.04, size=2)
    u, v = u - du, v - dv
    body = rng.uniform(0.40, 0.50)
    img = np.full((height, width), rng.uniform(10.0, 40.0))
    img += 120.0 * _ellipse(u, v, 0.0, 0.05, body, body + 0.06, soft=0.04)  # soft tissue
    for side in (-1, 1):  # lung fields: dark, slightly different per side
        cu = side * rng.uniform(0.15, 0.2)
        ru, rv = rng.uniform(0.1, 0.15), rng.uniform(0.25, 0.34)
        img -= rng.uniform(80.0, 105.0) * _ellipse(
            u, v, cu, rng.uniform(-0.05, 0.01), ru, rv, soft=0.03
        )
    img += 45.0 * _ellipse(u, v, 0.0, 0.0, 0.05, 0.5, soft=0.02)  # spine / mediastinum
    heart = rng.uniform(0.11, 0.16)
    img += 50.0 * _ellipse(u, v, 0.06, 0.12, heart, heart - 0.01, soft=0.04)  # to image right
    img += 30.0 * _ribs(u, v, rng)
    for side in (-1, 1):  # clavicles
        img += 45.0 * _band(u, v, side * 0.15, -0.33, side * 0.28, 0.012)
    if pneumonia:
        img += _consolidations(u, v, rng)
    img += 25.0 * _smooth_field(rng, width, height)  # overlapping soft tissue, per child
    img = img * rng.uniform(0.8, 1.15) + rng.uniform(-10.0, 10.0)  # exposure
    if (width, height) != (out_width, out_height):
        img = np.asarray(
            Image.fromarray(img.astype(np.float32)).resize(
                (out_width, out_height), Image.Resampling.BICUBIC
            ),
            dtype=np.float64,
        )
    img += gaussian_filter(rng.normal(0.0, 6.0, img.shape), 1.0)  # detector noise
    pixels = np.clip(img, 0, 255).astype(np.uint8)
    return _mark(Image.fromarray(pixels))


def _smooth_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Low-frequency noise in -1..1, made at 64x64 and upsampled (fast at any size)."""
    small = gaussian_filter(rng.normal(0.0, 1.0, (64, 64)), 4.0)
    small = small / (np.abs(small).max() + 1e-9)
    im = Image.fromarray(small.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(im, dtype=np.float64)


def _ellipse(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float, soft: float
) -> np.ndarray:
    """1 inside the ellipse, 0 outside, with a soft edge of width ``soft``."""
    r = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
    return np.clip((1.0 - r) / (soft / min(ru, rv)) + 0.5, 0.0, 1.0)


def _band(
    u: np.ndarray, v: np.ndarray, u0: float, v0: float, u1: float, half_width: float
) -> np.ndarray:
    """A soft straight band from (u0, v0) to (u1, v0 + small slope)."""
    lo, hi = min(u0, u1), max(u0, u1)
    inside = (u >= lo) & (u <= hi)
    line_v = v0 + 0.15 * np.abs(u - u0) * (1 if u1 > u0 else 1)
    return np.where(inside, np.exp(-(((v - line_v) / half_width) ** 2)), 0.0)


def _ribs(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros_like(u)
    for i in range(9):
        v0 = -0.28 + i * 0.065 + rng.uniform(-0.005, 0.005)
        for side in (-1, 1):
            curve = v0 + 0.35 * (u - side * 0.05) ** 2  # arcs sloping down to the sides
            mask = (side * u > 0.04) & (side * u < 0.36)
            out += np.where(mask, np.exp(-(((v - curve) / 0.011) ** 2)), 0.0)
    return out


def _consolidations(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cloudy patches inside the lung fields (what annotators are asked to spot)."""
    out = np.zeros_like(u)
    for _ in range(int(rng.integers(2, 5))):
        side = rng.choice([-1, 1])
        cu, cv = side * rng.uniform(0.12, 0.24), rng.uniform(-0.1, 0.22)
        ru, rv = rng.uniform(0.04, 0.09), rng.uniform(0.05, 0.1)
        out += 75.0 * _ellipse(u, v, cu, cv, ru, rv, soft=0.05)
    texture = gaussian_filter(rng.normal(0.0, 1.0, u.shape), 3.0)
    return out * (0.8 + 0.6 * texture)


def _mark(im: Image.Image) -> Image.Image:
    draw = ImageDraw.Draw(im)
    font_size = max(10, im.width // 22)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # very old Pillow without scalable default font
        font = ImageFont.load_default()
    draw.text((im.width // 40, im.height // 40), MARK, fill=255, font=font)
    draw.text((im.width // 40, im.height - font_size - im.height // 40), MARK, fill=255, font=font)
    return im
