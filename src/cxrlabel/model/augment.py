"""Batched augmentations for chest X-rays, in plain PyTorch (no torchvision).

What varies between real acquisitions: patient positioning (small rotations, shifts, zoom) and
exposure (brightness, contrast, gamma), plus detector noise. What does not: left and right. The
heart sits on the left and flipping would teach the model anatomy that does not occur (situs
inversus is about 1 in 10,000), so there is no horizontal flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    max_rotation_deg: float = 7.0
    max_shift: float = 0.06  # fraction of the image side
    scale_range: tuple[float, float] = (0.93, 1.08)
    brightness: float = 0.10  # added, in [0, 1] grey units
    contrast: float = 0.15  # multiplicative, around the image mean
    gamma: float = 0.20  # log-uniform in [1/(1+g), 1+g]
    noise_std: float = 0.015
    # Detector/resampling sharpness: Gaussian blur with sigma uniform in [0, max_blur_sigma]
    # pixels on a ``blur_prob`` share of images (0 = off). The squashed copies are softer
    # than the originals; blur teaches the model not to read sharpness as a class cue.
    blur_prob: float = 0.0
    max_blur_sigma: float = 0.0

    @classmethod
    def strong(cls) -> AugmentConfig:
        """Wider geometry and exposure, plus blur: for transfer to new acquisitions."""
        return cls(
            max_rotation_deg=10.0,
            max_shift=0.08,
            scale_range=(0.85, 1.2),
            brightness=0.12,
            contrast=0.25,
            gamma=0.35,
            noise_std=0.02,
            blur_prob=0.5,
            max_blur_sigma=1.2,
        )


def _rand(shape, gen: torch.Generator, device: torch.device, normal: bool = False):
    # Drawn where the generator lives (the CPU), then moved: a CPU generator cannot drive CUDA
    # sampling (training on a GPU crashed), and the same seed gives the same views on any device.
    draw = torch.randn if normal else torch.rand
    return draw(shape, generator=gen, device=gen.device).to(device)


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device):
    return low + (high - low) * _rand(n, gen, device)


def random_affine(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Rotate, shift and zoom each image of a (N, 1, S, S) batch; borders are filled by edge."""
    n, device = x.shape[0], x.device
    angle = _uniform(n, -cfg.max_rotation_deg, cfg.max_rotation_deg, gen, device) * math.pi / 180
    scale = _uniform(n, *cfg.scale_range, gen, device)
    tx = _uniform(n, -cfg.max_shift, cfg.max_shift, gen, device) * 2  # grid units span 2
    ty = _uniform(n, -cfg.max_shift, cfg.max_shift, gen, device) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_intensity(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Exposure changes on images in [0, 1]: gamma, contrast around the mean, brightness, noise."""
    n, device = x.shape[0], x.device
    shape = (n, 1, 1, 1)
    log_g = math.log1p(cfg.gamma)
    gamma = torch.exp(_uniform(n, -log_g, log_g, gen, device)).view(shape)
    x = x.clamp(1e-4, 1.0) ** gamma
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen, device).view(shape)
    brightness = _uniform(n, -cfg.brightness, cfg.brightness, gen, device).view(shape)
    x = (x - mean) * contrast + mean + brightness
    noise = _rand(x.shape, gen, device, normal=True) * cfg.noise_std
    return (x + noise).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of (N, 1, S, S) with its own sigma (N,) in pixels (separable, 5 taps)."""
    taps = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    s = sigma.clamp_min(1e-3).view(-1, 1)
    kernel = torch.exp(-0.5 * (taps / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (N, 5)
    n, _, h, w = x.shape
    # Grouped convolution: one kernel per image, images stacked as channels.
    flat = x.reshape(1, n, h, w)
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), kernel.view(n, 1, 1, 5), groups=n)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="replicate"), kernel.view(n, 1, 5, 1), groups=n)
    return flat.reshape(n, 1, h, w)


def random_blur(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.blur_prob <= 0 or cfg.max_blur_sigma <= 0:
        return x
    n, device = x.shape[0], x.device
    sigma = _uniform(n, 0.0, cfg.max_blur_sigma, gen, device)
    chosen = _rand(n, gen, device) < cfg.blur_prob
    return torch.where(chosen.view(-1, 1, 1, 1), gaussian_blur(x, sigma), x)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """A training view of a batch of (N, 1, S, S) images in [0, 1]."""
    return random_intensity(random_blur(random_affine(x, cfg, gen), cfg, gen), cfg, gen)
