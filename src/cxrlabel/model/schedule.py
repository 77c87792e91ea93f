"""The learning-rate plan: one cycle (warm-up, then cosine annealing) that ends inside the
time budget.

One-cycle training gives its best model at the end of the annealing. A run cut off while the
rate is still high keeps a half-trained model: on the new-patient estimate (issue 21) models
stopped mid-schedule read AUC 0.88-0.95 where the same settings trained to the end of their
schedule read 0.96-0.97. So as soon as the measured pace says the budget cannot hold every
planned epoch, the plan is shortened to the epochs that fit, and the rate anneals within them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

WARM_UP_SHARE = 0.15  # of the planned steps
PACE_MARGIN = 1.15  # an epoch may run slower than the recent ones (shared machines)


def epochs_that_fit(seconds_left: float, epoch_seconds: Sequence[float]) -> int:
    """Whole epochs the remaining budget holds at the pace of the last (up to) three."""
    if not epoch_seconds:
        raise ValueError("no epoch measured yet")
    recent = list(epoch_seconds[-3:])
    pace = max(sum(recent) / len(recent), 1e-6) * PACE_MARGIN
    return max(0, int(seconds_left // pace))


def another_member_fits(elapsed_s: float, member_s: float, budget_s: float) -> bool:
    """Whether one more ensemble member, as slow as the slowest so far, ends inside the budget.

    A seed ensemble adds little AUC (+0.003 on ``look_shift``) while a full schedule adds much
    (10 -> 20 epochs: +0.008), so a slow machine trains fewer full-length members rather than
    more shortened ones.
    """
    return elapsed_s + member_s * PACE_MARGIN <= budget_s


def fit_plan_to_budget(
    plan: OneCyclePlan, epoch: int, seconds_left: float, history: Sequence[dict]
) -> bool:
    """Shorten the schedule when the remaining budget cannot hold every planned epoch, so the
    model the budget leaves is an annealed one (a cut at a high rate keeps a half-trained one).
    ``history``: one dict per epoch run so far, with its ``seconds``."""
    if epoch >= plan.epochs:
        return False
    fits = epochs_that_fit(seconds_left, [h["seconds"] for h in history])
    return plan.shorten(epoch + max(fits, 1))


class OneCyclePlan:
    """``torch``'s OneCycleLR over a number of epochs that can only shrink.

    Shortening rebuilds the scheduler for the new length and replays the steps already taken,
    so the rate continues from the same point of the (now shorter) cycle.
    """

    def __init__(
        self, optimiser: torch.optim.Optimizer, peak_lr: float, epochs: int, steps_per_epoch: int
    ) -> None:
        self.optimiser = optimiser
        self.peak_lr = peak_lr
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.steps_taken = 0
        self._scheduler = self._build()

    def step(self) -> None:
        self._scheduler.step()
        self.steps_taken += 1

    def shorten(self, epochs: int) -> bool:
        """End the cycle after ``epochs`` (never before the current step); True if it moved."""
        epochs = max(epochs, -(-(self.steps_taken + 1) // self.steps_per_epoch))
        if epochs >= self.epochs:
            return False
        self.epochs = epochs
        self._scheduler = self._build()
        return True

    def _build(self) -> torch.optim.lr_scheduler.OneCycleLR:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimiser,
            max_lr=self.peak_lr,
            total_steps=self.epochs * self.steps_per_epoch,
            pct_start=WARM_UP_SHARE,
        )
        with warnings.catch_warnings():  # replaying steps without optimiser steps is intended
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(self.steps_taken):
                scheduler.step()
        return scheduler

    @property
    def lr(self) -> float:
        return float(self.optimiser.param_groups[0]["lr"])
