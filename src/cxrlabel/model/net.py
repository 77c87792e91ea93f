"""A small CNN for 1-channel chest X-rays whose head doubles as a class activation map.

The head is a 1x1 convolution over the last feature map followed by a spatial mean, which is
exactly "global average pooling + linear layer". Written this way the per-location scores (the
CAM of Zhou et al. 2016) come out of the same forward pass, so ONNX Runtime can draw heatmaps
without gradients. For a GAP + linear head, Grad-CAM's channel weights are the linear weights,
so this CAM equals Grad-CAM up to a constant factor.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_WIDTHS = (16, 32, 64, 128)  # ~0.3 M parameters: fits a 2-core CPU budget


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TriageNet(nn.Module):
    """Input (N, 1, S, S) normalised grey levels; output logit (N,) and CAM (N, S/16, S/16)."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS, dropout: float = 0.3) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.features = nn.Sequential(
            # Stem: stride 2 then pool, as in ResNet; at 128 px a pixel is ~1.5 mm at this
            # age, and consolidations span tens of pixels, so little is lost and CPU time halves.
            _conv(1, w0, stride=2),
            nn.MaxPool2d(2),  # S/4
            _conv(w0, w1),
            _conv(w1, w1),
            nn.MaxPool2d(2),  # S/8
            _conv(w1, w2),
            _conv(w2, w2),
            nn.MaxPool2d(2),  # S/16
            _conv(w2, w3),
            _conv(w3, w3),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Conv2d(w3, 1, 1)  # per-location pneumonia evidence

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.head(self.dropout(self.features(x)))[:, 0]
        return cam.mean(dim=(1, 2)), cam


class SeedEnsemble(nn.Module):
    """Several TriageNets trained with different seeds; the mean logit and the mean CAM.

    Averaging logits keeps the CAM contract (the CAM's spatial mean is still the logit) and
    exports to one ONNX graph, so ``predict`` runs it unchanged. Seeds disagree most on new
    patients; their mean moves less, and so do thresholds chosen on it.
    """

    def __init__(self, members: list[TriageNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [member(x) for member in self.members]
        logit = torch.stack([o[0] for o in outputs]).mean(dim=0)
        cam = torch.stack([o[1] for o in outputs]).mean(dim=0)
        return logit, cam


def build(widths: tuple[int, ...], n_members: int = 1) -> nn.Module:
    """The architecture a model folder describes: one TriageNet or a seed ensemble."""
    if n_members <= 1:
        return TriageNet(widths)
    return SeedEnsemble([TriageNet(widths) for _ in range(n_members)])
