"""Model inputs as tensors, and the logits of a trained network (train, pretrain, crossfit)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrlabel.model.data import INPUT_MEAN, INPUT_STD
from cxrlabel.model.net import TriageNet


def to_tensor(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(pixels).to(device).unsqueeze(1).float() / 255.0


def normalise(x: torch.Tensor) -> torch.Tensor:
    # channels_last roughly halves CPU convolution time here (oneDNN's preferred layout).
    return ((x - INPUT_MEAN) / INPUT_STD).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def torch_logits(
    model: TriageNet, pixels: np.ndarray, device: torch.device, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N,), CAMs (N, h, w)) of uint8 (N, S, S) images, in eval mode."""
    model.eval().to(memory_format=torch.channels_last)
    logits, cams = [], []
    for start in range(0, len(pixels), batch_size):
        x = normalise(to_tensor(pixels[start : start + batch_size], device))
        logit, cam = model(x)
        logits.append(logit.cpu().numpy())
        cams.append(cam.cpu().numpy())
    return np.concatenate(logits), np.concatenate(cams)


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """Fixed test-time views of (N, 1, S, S) in [0, 1]: as is, zoomed 6 %, two exposures."""
    n = x.shape[0]
    theta = torch.tensor([[1 / 1.06, 0, 0], [0, 1 / 1.06, 0]], dtype=x.dtype, device=x.device)
    theta = theta.expand(n, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    zoomed = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    clamped = x.clamp(1e-4, 1.0)
    return [x, zoomed, clamped**0.85, clamped**1.15]


@torch.no_grad()
def predict_logits(
    model: TriageNet,
    pixels: np.ndarray,
    device: torch.device,
    tta: bool = False,
    batch_size: int = 128,
) -> np.ndarray:
    """Logits of uint8 (N, S, S); with ``tta`` the mean logit over ``tta_views``."""
    if not tta:
        return torch_logits(model, pixels, device, batch_size)[0]
    model.eval().to(memory_format=torch.channels_last)
    out = []
    for start in range(0, len(pixels), batch_size):
        x = to_tensor(pixels[start : start + batch_size], device)
        views = [model(normalise(v))[0] for v in tta_views(x)]
        out.append(torch.stack(views).mean(dim=0).cpu().numpy())
    return np.concatenate(out)
