"""Heatmaps: the network's class activation map drawn over the X-ray.

The CAM comes straight out of the forward pass (see net.py), so both runtimes draw the same map.
Only positive evidence (towards pneumonia) is drawn. Its scale is fixed in logit units, not
stretched to each image's maximum, so an image with weak evidence gets a faint overlay instead
of a bright blob that would look alarming.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

EVIDENCE_FULL_SCALE = 3.0  # per-location logit contribution drawn at full colour
MAX_SIDE = 1024  # heatmaps are for viewing; larger X-rays are shown downscaled
OPACITY = 0.6


def display_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def cam_overlay(gray: np.ndarray, cam: np.ndarray, temperature: float = 1.0) -> Image.Image:
    """RGB image of ``gray`` (H, W uint8) with the CAM (h, w) upsampled over it.

    The CAM was computed on the squashed square image; squashing is a plain resize, so
    stretching the map back to (W, H) puts each cell over the anatomy it came from.
    """
    from matplotlib import colormaps

    width, height = display_size(gray.shape[1], gray.shape[0])
    base = Image.fromarray(gray, mode="L").resize((width, height), Image.Resampling.BILINEAR)
    evidence = np.clip(np.asarray(cam, dtype=np.float32) / temperature, 0.0, None)
    upsampled = Image.fromarray(evidence, mode="F").resize(
        (width, height), Image.Resampling.BICUBIC
    )
    intensity = np.clip(np.asarray(upsampled) / EVIDENCE_FULL_SCALE, 0.0, 1.0)[..., None]
    colour = colormaps["inferno"](intensity[..., 0])[..., :3]
    grey = np.asarray(base, dtype=np.float32)[..., None].repeat(3, axis=2) / 255.0
    alpha = OPACITY * intensity
    blended = grey * (1.0 - alpha) + colour * alpha
    return Image.fromarray(np.round(blended * 255).astype(np.uint8), mode="RGB")
