"""The learning-rate plan that always anneals inside the time budget (issue 21)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="the [model] extra (PyTorch) is not installed")

from cxrlabel.model.schedule import (  # noqa: E402
    OneCyclePlan,
    another_member_fits,
    epochs_that_fit,
    fit_plan_to_budget,
)

PEAK = 2e-3
STEPS = 10  # per epoch


def _plan(epochs: int) -> OneCyclePlan:
    weights = torch.nn.Parameter(torch.zeros(2))
    return OneCyclePlan(torch.optim.AdamW([weights], lr=PEAK), PEAK, epochs, STEPS)


def _run(plan: OneCyclePlan, epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs * STEPS):
        plan.optimiser.step()
        plan.step()
        rates.append(plan.lr)
    return rates


def test_epochs_that_fit_uses_the_recent_pace_with_a_margin() -> None:
    assert epochs_that_fit(100.0, [10.0]) == 8  # 100 // 11.5
    assert epochs_that_fit(100.0, [50.0, 10.0, 10.0, 10.0]) == 8  # the last three only
    assert epochs_that_fit(5.0, [10.0]) == 0
    with pytest.raises(ValueError):
        epochs_that_fit(100.0, [])


def test_a_plan_that_fits_is_torch_one_cycle_unchanged() -> None:
    plan = _plan(4)
    weights = torch.nn.Parameter(torch.zeros(2))
    reference_opt = torch.optim.AdamW([weights], lr=PEAK)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        reference_opt, max_lr=PEAK, total_steps=4 * STEPS, pct_start=0.15
    )
    expected = []
    for _ in range(4 * STEPS - 1):
        reference_opt.step()
        reference.step()
        expected.append(reference_opt.param_groups[0]["lr"])
    assert plan.shorten(4) is False and plan.shorten(9) is False
    assert _run(plan, 4)[:-1] == expected


def test_a_shortened_plan_continues_then_anneals_by_its_new_end() -> None:
    plan = _plan(20)
    before = _run(plan, 2)  # still warming up at 2 of 20 epochs (warm-up is 3)
    assert before[-1] < PEAK
    assert plan.shorten(5)
    first_after = _run(plan, 1)
    # The rate goes on from where it was (no restart of the warm-up from the bottom) ...
    assert first_after[0] > before[0]
    rest = _run(plan, 2)[:-1]  # the last step of a cycle is the end point itself
    # ... and has annealed to a small fraction of the peak by the new last epoch.
    assert rest[-1] < PEAK / 1000
    # Past the shorter cycle's warm-up already: it continues on its annealing side, near the
    # rate it had, never above the peak.
    assert before[-1] / 2 < first_after[0] <= PEAK


def test_a_plan_never_shrinks_below_the_steps_taken() -> None:
    plan = _plan(20)
    _run(plan, 3)
    assert plan.shorten(1)  # asked for fewer epochs than already run: one more epoch
    assert plan.epochs == 4
    _run(plan, 1)  # the remaining epoch runs without stepping past the cycle


def test_budget_check_shortens_only_when_the_pace_says_so() -> None:
    history = [{"seconds": 10.0}, {"seconds": 10.0}]
    roomy = _plan(20)
    assert not fit_plan_to_budget(roomy, 2, seconds_left=1000.0, history=history)
    assert roomy.epochs == 20
    tight = _plan(20)
    _run(tight, 2)
    assert fit_plan_to_budget(tight, 2, seconds_left=60.0, history=history)
    assert tight.epochs == 2 + math.floor(60.0 // 11.5)
    spent = _plan(20)
    _run(spent, 2)
    assert fit_plan_to_budget(spent, 2, seconds_left=1.0, history=history)
    assert spent.epochs == 3  # one more epoch at most; the wall-clock guard stops it if needed


def test_another_member_must_fit_whole_with_the_margin() -> None:
    assert another_member_fits(100.0, 100.0, 300.0)  # 100 + 115 <= 300
    assert not another_member_fits(200.0, 100.0, 300.0)  # 200 + 115 > 300
