"""Self-supervised pre-training (SimCLR) of the triage network's features, on synthetic images."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the [model] extra (PyTorch) is not installed")
pytest.importorskip("onnxruntime", reason="the [model] extra (onnxruntime) is not installed")

import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from cxrlabel.model.net import TriageNet  # noqa: E402
from cxrlabel.model.pretrain import nt_xent, pretrain_features  # noqa: E402
from cxrlabel.model.train import TrainConfig, fit, load_splits, train  # noqa: E402
from model_support import write_synthetic_export  # noqa: E402

SIZE = 32
WIDTHS = (16, 32, 64, 128)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return write_synthetic_export(tmp_path_factory.mktemp("export"), n=48)


@pytest.fixture(scope="module")
def train_pixels(export_dir):
    return load_splits(export_dir, SIZE, seed=0, console=Console(quiet=True))["train"].pixels


def _pretrain(pixels, epochs: int, seed: int = 0):
    with Progress(console=Console(quiet=True)) as progress:
        return pretrain_features(
            pixels, WIDTHS, epochs, seed, torch.device("cpu"), progress, budget_s=600
        )


def test_nt_xent_rewards_views_that_find_their_partner():
    gen = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(16, 8, generator=gen), dim=1)
    matched = nt_xent(z, z.clone()).item()
    mismatched = nt_xent(z, z[torch.randperm(16, generator=gen)]).item()
    assert matched < math.log(2 * 16 - 1) < mismatched


def test_pretraining_lowers_its_loss_and_is_seeded(train_pixels):
    features, history = _pretrain(train_pixels, epochs=8)
    again, _ = _pretrain(train_pixels, epochs=8)
    assert len(history) == 8
    assert history[-1]["loss"] < history[0]["loss"]
    fresh = TriageNet(WIDTHS).features.state_dict()
    assert features.keys() == fresh.keys()
    assert all(torch.equal(features[k], again[k]) for k in features)
    assert not all(torch.equal(features[k], fresh[k]) for k in features)


def test_pretraining_needs_two_images(train_pixels):
    with pytest.raises(ValueError, match="two images"):
        _pretrain(train_pixels[:1], epochs=1)


def test_members_start_from_the_pretrained_features(export_dir, train_pixels):
    features, _ = _pretrain(train_pixels, epochs=1)
    splits = load_splits(export_dir, SIZE, seed=0, console=Console(quiet=True))
    frozen = TrainConfig(size=SIZE, max_epochs=1, batch_size=8, threads=2, lr=0.0)
    model, _, _ = fit(
        splits, frozen, torch.device("cpu"), Console(quiet=True), time.monotonic(), features
    )
    weights = {k: v for k, v in model.features.state_dict().items() if k.endswith("weight")}
    assert all(torch.equal(weights[k], features[k]) for k in weights)  # lr 0: as loaded


def test_train_with_pretraining_records_it_and_the_card_says_so(export_dir, tmp_path):
    cfg = TrainConfig(
        size=SIZE, max_epochs=1, batch_size=8, threads=2, ensemble=1, pretrain_epochs=2
    )
    result = train(export_dir, tmp_path / "m", cfg, Console(quiet=True))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert [h["epoch"] for h in meta["training"]["pretrain"]] == [1, 2]
    assert meta["training"]["config"]["pretrain_epochs"] == 2
    assert result.meta["training"]["pretrain"] == meta["training"]["pretrain"]
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    estimate = json.loads(
        (Path(__file__).parents[1] / "src/cxrlabel/model/newpatient_estimate.json").read_text()
    )
    assert "2 epochs of SimCLR" in card and "no outside data" in card
    # The card says when the bundled new-patient estimate was measured for another recipe.
    differs = "trained with self-supervised pre-training, the recipe measured without"
    assert (differs in card) == (not estimate.get("pretrain_epochs"))


def test_a_negative_pretraining_length_is_refused_before_anything_is_written(export_dir, tmp_path):
    from typer.testing import CliRunner

    from cxrlabel.cli import app

    out = tmp_path / "m"
    args = ["train", str(export_dir), "-o", str(out), "--pretrain-epochs", "-1"]
    result = CliRunner().invoke(app, args)
    said = " ".join(result.output.replace("│", " ").split())  # the error box wraps lines
    assert result.exit_code == 2
    assert "'--pretrain-epochs': Input should be greater than or equal to 0" in said
    assert not out.exists()
