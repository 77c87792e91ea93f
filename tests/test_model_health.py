"""Issue 19: `train` refuses too few images, warns on small data and degenerate calibration,
says so in the model card, and stores its preprocessing/calibration in the ONNX file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrlabel.model import health

torch = pytest.importorskip("torch", reason="the [model] extra (PyTorch) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [model] extra (onnxruntime) is not installed")

from rich.console import Console  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cxrlabel.cli import app  # noqa: E402
from cxrlabel.model.data import load_batch  # noqa: E402
from cxrlabel.model.infer import OnnxModel  # noqa: E402
from cxrlabel.model.train import TrainConfig, train  # noqa: E402
from model_support import write_synthetic_export  # noqa: E402


def test_size_refusal_names_the_counts():
    assert health.size_refusal(200, 50) is None
    message = health.size_refusal(12, 4)
    assert "12 train" in message and "4 validation" in message


def test_the_80_image_failure_is_reported():
    # What issue 19 saw on 80 images: T pinned at 20, every probability 0.5014.
    problems = health.calibration_warnings(20.0, np.full(24, 0.5014), 0.5014, 0.5014)
    assert len(problems) == 3
    assert any("ceiling" in p for p in problems)
    assert any("barely vary" in p for p in problems)
    assert any("no review band" in p for p in problems)


def test_a_healthy_calibration_has_no_warning():
    p = np.linspace(0.02, 0.98, 200)
    assert health.calibration_warnings(1.7, p, 0.6, 0.2) == []


def test_train_refuses_too_few_images(tmp_path):
    export = write_synthetic_export(tmp_path / "export", n=20)  # 12 train, 5 validation
    result = CliRunner().invoke(app, ["train", str(export), "-o", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "too few images" in result.output
    assert not (tmp_path / "m" / "model.onnx").exists()


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    export = write_synthetic_export(tmp_path_factory.mktemp("export"), n=48)
    cfg = TrainConfig(size=64, max_epochs=1, batch_size=8, threads=2)
    return export, train(export, tmp_path_factory.mktemp("model"), cfg, Console(quiet=True))


def test_small_data_warns_in_model_json_and_card(small_model):
    _, result = small_model
    warnings = result.meta["warnings"]
    assert any("training images" in w for w in warnings)
    card = (result.model_dir / "MODEL_CARD.md").read_text()
    assert "## Warnings" in card
    assert warnings[0] in card


def test_onnx_file_carries_its_metadata(small_model):
    export, result = small_model
    session = ort.InferenceSession(
        str(result.model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    props = session.get_modelmeta().custom_metadata_map
    meta = json.loads((result.model_dir / "model.json").read_text())
    assert float(props["temperature"]) == pytest.approx(meta["temperature"])
    assert json.loads(props["thresholds"]) == meta["thresholds"]
    pre = json.loads(props["preprocessing"])
    assert (pre["resize_to"], pre["squash_to"]) == (64, meta["squash_side"])
    assert (pre["mean"], pre["std"]) == (meta["input_mean"], meta["input_std"])
    assert json.loads(props["warnings"]) == meta["warnings"]
    # The file with metadata still runs on ONNX Runtime and gives probabilities.
    pixels = load_batch(sorted(export.rglob("*.png"))[:4], 64)
    p, cam = OnnxModel(result.model_dir).probabilities(pixels)
    assert p.shape == (4,) and np.all((p > 0) & (p < 1)) and cam.shape == (4, 4, 4)


def test_predict_repeats_the_training_warnings(small_model, tmp_path):
    export, result = small_model
    image = sorted(export.rglob("*.png"))[0]
    run = CliRunner().invoke(
        app,
        ["predict", "--model", str(result.model_dir), str(image), "-o", str(tmp_path / "p.csv")],
    )
    assert run.exit_code == 0, run.output
    assert "training reported" in run.output and "training images" in run.output
