"""Weight averaging over the end of the learning-rate schedule (``train --average-last``).

Averaging the weights a run passes through late in training (stochastic weight averaging;
densely, every step, as SWAD does for domain generalisation) lands in a flatter region of the
loss than any one step, which is reported to transfer better to data drawn unlike the
training set. Batch-norm statistics of an average of weights are not the average of the
statistics, so they are measured again on the (un-augmented) training images at the end.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, update_bn

from cxrlabel.model.net import TriageNet
from cxrlabel.model.schedule import OneCyclePlan
from cxrlabel.model.tensors import normalise, to_tensor


class WeightAverage:
    """Uniform average of the weights after every step in the last ``share`` of the plan."""

    def __init__(self, model: TriageNet, share: float) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"the averaged share of the schedule must be in (0, 1], not {share}")
        self.share = share
        self._average = AveragedModel(model)

    @property
    def steps_averaged(self) -> int:
        return int(self._average.n_averaged.item())

    def after_step(self, model: TriageNet, plan: OneCyclePlan) -> None:
        # The plan can be shortened to fit the time budget; the window follows its end.
        total = plan.epochs * plan.steps_per_epoch
        if plan.steps_taken > total * (1.0 - self.share):
            self._average.update_parameters(model)

    def result(
        self, model: TriageNet, pixels: np.ndarray, device: torch.device, batch: int = 128
    ) -> TriageNet:
        """``model`` holding the averaged weights, batch-norm statistics re-measured on the
        uint8 images ``pixels`` (N, S, S)."""
        if self.steps_averaged == 0:
            return model
        model.load_state_dict(self._average.module.state_dict())
        return remeasure_batch_norm(model, pixels, device, batch)


def remeasure_batch_norm(
    model: TriageNet, pixels: np.ndarray, device: torch.device, batch: int = 128
) -> TriageNet:
    """``model`` (changed in place, returned in eval mode) with every batch-norm layer's
    statistics measured on the uint8 images ``pixels`` (N, S, S), equally weighted."""
    inputs = (
        normalise(to_tensor(pixels[i : i + batch], device)) for i in range(0, len(pixels), batch)
    )
    update_bn(inputs, model, device)
    return model.eval()
