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


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device):
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


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
    noise = torch.randn(x.shape, generator=gen, device=device) * cfg.noise_std
    return (x + noise).clamp(0.0, 1.0)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """A training view of a batch of (N, 1, S, S) images in [0, 1]."""
    return random_intensity(random_affine(x, cfg, gen), cfg, gen)
