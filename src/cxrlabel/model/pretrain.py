"""Self-supervised pre-training of the feature stack on the training images (SimCLR).

Before the supervised members are trained, ``TriageNet.features`` learns, without labels, to
map two augmented views of one image (``augment`` with ``AugmentConfig.strong``: other
positioning, exposure, sharpness) close together and views of other images apart (NT-Xent,
Chen et al. 2020). Every member then starts from these weights instead of random ones. The
views are the acquisition differences a new hospital brings, so the idea is that the features
learn to ignore them before any label is seen. Opt-in (``train --pretrain-epochs 20``): on the
internal new-patient shift (issue 21, docs/model.md) one pre-trained start raised the AUC of
all six seeds fine-tuned from it, but pre-training inside each run, as ``train`` does, read no
better than random weights (pooled AUC 0.972 against 0.975): the start itself is a draw.

Only the export's ``train`` images are used: validation stays untouched for calibration, and
a new patient's image is never in the job.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from cxrlabel.model.augment import AugmentConfig, augment
from cxrlabel.model.net import TriageNet
from cxrlabel.model.schedule import OneCyclePlan, fit_plan_to_budget
from cxrlabel.model.tensors import normalise, to_tensor

BATCH = 128  # views per side; the loss contrasts each view with 2 * BATCH - 2 negatives
TEMPERATURE = 0.2
PROJECTION = 64
PEAK_LR = 2e-3
WEIGHT_DECAY = 1e-4


class Contrastive(nn.Module):
    """``TriageNet.features``, pooled, and a projection head used only while pre-training."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.features = TriageNet(widths).features
        width = widths[-1]
        self.project = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, PROJECTION)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(self.features(x).mean(dim=(2, 3))), dim=1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """SimCLR's loss for unit embeddings of paired views: each view must pick its partner
    among the 2N - 1 others (chance: log(2N - 1))."""
    z = torch.cat([z1, z2])
    similarity = (z @ z.T / temperature).fill_diagonal_(-1e9)
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


def _view(
    pixels: np.ndarray, aug: AugmentConfig, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    return normalise(augment(to_tensor(pixels, device), aug, gen))


def pretrain_features(
    pixels: np.ndarray,
    widths: tuple[int, ...],
    epochs: int,
    seed: int,
    device: torch.device,
    progress: Progress,
    budget_s: float,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """The feature stack's weights after ``epochs`` of SimCLR on ``pixels`` (uint8 (N, S, S)),
    and the loss per epoch. The schedule anneals within ``budget_s`` seconds (shortened, as in
    supervised training, when the measured pace says the planned epochs do not fit)."""
    batch = min(BATCH, len(pixels))
    if batch < 2:
        raise ValueError("pre-training needs at least two images")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = Contrastive(widths).to(device, memory_format=torch.channels_last).train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=PEAK_LR, weight_decay=WEIGHT_DECAY)
    plan = OneCyclePlan(optimiser, PEAK_LR, epochs, len(pixels) // batch)
    aug = AugmentConfig.strong()
    started, history = time.monotonic(), []
    epochs_task = progress.add_task("pre-training (SimCLR)", total=epochs, info="")
    for epoch in range(1, epochs + 1):
        t0, total, steps = time.monotonic(), 0.0, 0
        order = torch.randperm(len(pixels), generator=gen).numpy()
        for start in range(0, len(order) - batch + 1, batch):  # full batches only
            idx = np.sort(order[start : start + batch])
            loss = nt_xent(
                net(_view(pixels[idx], aug, gen, device)), net(_view(pixels[idx], aug, gen, device))
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            plan.step()
            total, steps = total + loss.item(), steps + 1
        history.append({"epoch": epoch, "loss": total / steps, "seconds": time.monotonic() - t0})
        progress.update(
            epochs_task,
            advance=1,
            info=f"loss {total / steps:.3f} (chance {math.log(2 * batch - 1):.2f})",
        )
        if epoch >= plan.epochs:
            break
        if fit_plan_to_budget(plan, epoch, budget_s - (time.monotonic() - started), history):
            progress.update(epochs_task, total=plan.epochs)
    return {k: v.detach().cpu().clone() for k, v in net.features.state_dict().items()}, history
