"""Issue 21: a seed ensemble trains into one ONNX graph and records how thresholds move
with the seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the [model] extra (PyTorch) is not installed")
pytest.importorskip("onnxruntime", reason="the [model] extra (onnxruntime) is not installed")

from typer.testing import CliRunner  # noqa: E402

from cxrlabel.cli import app  # noqa: E402
from cxrlabel.model.data import load_batch  # noqa: E402
from cxrlabel.model.infer import OnnxModel  # noqa: E402
from cxrlabel.model.net import SeedEnsemble, TriageNet, build  # noqa: E402
from model_support import write_synthetic_export  # noqa: E402


def test_ensemble_logit_is_the_mean_and_cam_contract_holds():
    torch.manual_seed(0)
    members = [TriageNet().eval(), TriageNet().eval()]
    ensemble = SeedEnsemble(members).eval()
    x = torch.randn(3, 1, 64, 64)
    logit, cam = ensemble(x)
    expected = (members[0](x)[0] + members[1](x)[0]) / 2
    assert torch.allclose(logit, expected, atol=1e-6)
    assert torch.allclose(cam.mean(dim=(1, 2)), logit, atol=1e-5)
    assert isinstance(build((16, 32, 64, 128), 1), TriageNet)


def test_train_with_an_ensemble_of_two(tmp_path):
    export = write_synthetic_export(tmp_path / "export", n=48)
    out = tmp_path / "model"
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(export),
            "-o",
            str(out),
            "--size",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--threads",
            "2",
            "--ensemble",
            "2",
            "--augment",
            "strong",
        ],
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["ensemble"] == 2
    assert len(meta["seed_spread"]["flag"]) == 2 and len(meta["seed_spread"]["temperature"]) == 2
    assert meta["onnx_parity_max_abs_diff"] < 1e-4  # torch ensemble reloads and matches ONNX
    pixels = load_batch(sorted(export.rglob("*.png"))[:3], 64)
    p, cam = OnnxModel(out).probabilities(pixels)
    assert p.shape == (3,) and cam.shape == (3, 4, 4) and np.all((p > 0) & (p < 1))
    card = (out / "MODEL_CARD.md").read_text()
    assert "Seed ensemble of 2 members" in card
    assert meta["training"]["augment"]["blur_prob"] > 0 and "Gaussian blur" in card


def test_train_refuses_an_unknown_augment_preset(tmp_path):
    result = CliRunner().invoke(
        app, ["train", str(tmp_path), "-o", str(tmp_path / "m"), "--augment", "wild"]
    )
    assert result.exit_code == 2 and "default or strong" in result.output


def test_a_budget_too_small_for_another_full_member_trains_fewer_members(tmp_path):
    """The first member's own pace says a second would not fit: one full member, not three
    shortened ones, and the card says so (whatever the machine's speed: the budget is tiny)."""
    from rich.console import Console

    from cxrlabel.model.train import TrainConfig, train

    export = write_synthetic_export(tmp_path / "export", n=48)
    cfg = TrainConfig(size=32, max_epochs=3, batch_size=8, threads=2, ensemble=3)
    cfg.max_minutes = 1e-4  # 6 ms: spent before the first epoch ends
    result = train(export, tmp_path / "m", cfg, Console(quiet=True))
    assert result.meta["ensemble"] == 1
    assert result.meta["training"]["config"]["ensemble"] == 3
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    assert "3 members were asked for; only 1 fitted the time budget" in card
