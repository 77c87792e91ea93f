"""Weight averaging over the end of the schedule (``train --average-last``)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the [model] extra (PyTorch) is not installed")

from rich.console import Console  # noqa: E402

from cxrlabel.model.averaging import WeightAverage  # noqa: E402
from cxrlabel.model.net import TriageNet  # noqa: E402
from cxrlabel.model.schedule import OneCyclePlan  # noqa: E402
from cxrlabel.model.tensors import normalise, to_tensor  # noqa: E402
from cxrlabel.model.train import TrainConfig, fit, load_splits  # noqa: E402
from model_support import write_synthetic_export  # noqa: E402

WIDTHS = (4, 8, 8, 8)


def _steps(model: TriageNet, plan: OneCyclePlan, average: WeightAverage, n: int) -> list[dict]:
    """``n`` optimiser steps on random inputs; the weights after each step."""
    gen = torch.Generator().manual_seed(0)
    after = []
    for _ in range(n):
        x = torch.rand(4, 1, 32, 32, generator=gen)
        logit, _ = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.ones(4))
        plan.optimiser.zero_grad()
        loss.backward()
        plan.optimiser.step()
        plan.step()
        average.after_step(model, plan)
        after.append({k: v.detach().clone() for k, v in model.named_parameters()})
    return after


def test_the_last_share_of_the_schedule_is_averaged_uniformly():
    torch.manual_seed(0)
    model = TriageNet(WIDTHS)
    plan = OneCyclePlan(torch.optim.AdamW(model.parameters(), lr=1e-2), 1e-2, 4, 5)
    average = WeightAverage(model, 0.4)
    after = _steps(model, plan, average, 20)
    # 20 steps; the last 40 % are steps 13-20 (steps_taken > 12).
    assert average.steps_averaged == 8
    pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 32), dtype=np.uint8)
    result = average.result(model, pixels, torch.device("cpu"))
    for name, value in result.named_parameters():
        expected = torch.stack([state[name] for state in after[12:]]).mean(dim=0)
        assert torch.allclose(value, expected, atol=1e-6), name
    # Batch-norm statistics are measured again on the images, not averaged: with one batch,
    # the first layer's running mean is that batch's mean of the first convolution's output.
    conv, bn = result.features[0][0], result.features[0][1]
    with torch.no_grad():
        first = conv(normalise(to_tensor(pixels, torch.device("cpu"))))
    assert torch.allclose(bn.running_mean, first.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not result.training


def test_the_window_follows_a_schedule_shortened_to_fit_the_budget():
    torch.manual_seed(0)
    model = TriageNet(WIDTHS)
    plan = OneCyclePlan(torch.optim.AdamW(model.parameters(), lr=1e-2), 1e-2, 10, 2)
    average = WeightAverage(model, 0.5)
    _steps(model, plan, average, 4)
    assert average.steps_averaged == 0  # 4 of 20 planned steps
    plan.shorten(4)  # 8 steps now: the window is steps 5-8
    _steps(model, plan, average, 4)
    assert average.steps_averaged == 4


def test_nothing_averaged_keeps_the_model_and_a_bad_share_is_refused():
    model = TriageNet(WIDTHS)
    average = WeightAverage(model, 0.3)
    pixels = np.zeros((2, 32, 32), dtype=np.uint8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kept = average.result(model, pixels, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in kept.state_dict().items())
    for share in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="share of the schedule"):
            WeightAverage(model, share)


def test_fit_returns_the_averaged_model(tmp_path):
    export = write_synthetic_export(tmp_path / "export", n=48)
    splits = load_splits(export, 32, seed=0, console=Console(quiet=True))
    console = Console(record=True, width=200)
    states = {}
    for share in (0.0, 0.5):
        cfg = TrainConfig(size=32, max_epochs=2, batch_size=8, threads=2, average_last=share)
        model, history, _ = fit(splits, cfg, torch.device("cpu"), console, time.monotonic())
        states[share] = model.state_dict()
        assert len(history) == 2
    assert "weights averaged over" in console.export_text()
    assert any(not torch.equal(states[0.0][k], states[0.5][k]) for k in states[0.0])


def test_the_card_says_which_weights_the_model_holds(tmp_path):
    import json

    from cxrlabel.model.card import _kept, new_patient_section

    training = {"config": {"average_last": 0.3}, "epochs_run": 20, "best_epoch": 17}
    assert "last 30% of the schedule are averaged" in _kept({"training": training})
    best = {"config": {"average_last": 0.0}, "epochs_run": 20, "best_epoch": 17}
    assert "best validation loss is kept (epoch 17 of 20)" in _kept({"training": best})
    figures = {"n": 10, "proxy_auc": 0.99, "auc": 0.97, "auc_ci": [0.96, 0.98]}
    for key in ("flag_sensitivity", "flag_specificity", "clear_npv"):
        figures |= {key: 0.9, f"{key}_ci": [0.8, 0.95]}
    figures |= {"clear_specificity": 0.8, "seeds": [0]}
    est = {"measured_by": "bench", "size": 128, "epochs": 20, "augment": "default"}
    est |= {"tta": False, "date": "2026-12-04", "schemes": {"look_shift": figures}}
    path = tmp_path / "estimate.json"
    path.write_text(json.dumps(est))
    text = new_patient_section({"input_size": 128, "training": training}, path)
    assert "weights were averaged over the last 30% of the schedule, the recipe's not" in text
    path.write_text(json.dumps(est | {"average_last": 0.3}))
    text = new_patient_section({"input_size": 128, "training": training}, path)
    assert "weights averaged over the last 30% of the schedule; measured" in text
    assert "the figures describe the recipe" not in text


def test_train_with_averaging_writes_a_model_whose_card_says_so(tmp_path):
    import json

    from cxrlabel.model.train import train

    export = write_synthetic_export(tmp_path / "export", n=48)
    cfg = TrainConfig(size=32, max_epochs=2, batch_size=8, threads=2, ensemble=1)
    result = train(export, tmp_path / "model", replace(cfg, average_last=0.5), Console(quiet=True))
    meta = json.loads((result.model_dir / "model.json").read_text())
    assert meta["training"]["config"]["average_last"] == 0.5
    card = (result.model_dir / "MODEL_CARD.md").read_text()
    assert "last 50% of the schedule are averaged" in card
    assert "best validation loss is kept" not in card


@pytest.mark.parametrize(
    ("value", "message"),
    [("1.5", "less than or equal to 1"), ("-0.2", "greater than or equal to 0")],
)
def test_a_share_outside_0_1_is_refused_before_anything_is_written(tmp_path, value, message):
    from typer.testing import CliRunner

    from cxrlabel.cli import app

    export = write_synthetic_export(tmp_path / "export", n=48)
    out = tmp_path / "m"
    args = ["train", str(export), "-o", str(out), "--average-last", value]
    result = CliRunner().invoke(app, args)
    said = " ".join(result.output.replace("│", " ").split())  # the error box wraps lines
    assert result.exit_code == 2
    assert f"'--average-last': Input should be {message}" in said
    assert not out.exists()
