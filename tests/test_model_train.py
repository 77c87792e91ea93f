"""Training, ONNX export and the predict/score contracts on a tiny synthetic export."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the [model] extra (PyTorch) is not installed")
pytest.importorskip("onnxruntime", reason="the [model] extra (onnxruntime) is not installed")

from PIL import Image  # noqa: E402
from rich.console import Console  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cxrlabel.cli import app  # noqa: E402
from cxrlabel.model import infer  # noqa: E402
from cxrlabel.model.augment import AugmentConfig, augment  # noqa: E402
from cxrlabel.model.data import find_images, load_batch  # noqa: E402
from cxrlabel.model.net import TriageNet, build  # noqa: E402
from cxrlabel.model.tensors import predict_logits, torch_logits  # noqa: E402
from cxrlabel.model.train import (  # noqa: E402
    TORCH_WEIGHTS,
    TrainConfig,
    fit,
    load_splits,
    train,
)
from fixtures_images import dicom_bytes, dicom_dataset, malformed_dicom  # noqa: E402
from model_support import synthetic_xray, write_synthetic_export  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return write_synthetic_export(tmp_path_factory.mktemp("export"), n=48)


@pytest.fixture(scope="module")
def trained(export_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model")
    cfg = TrainConfig(size=SIZE, max_epochs=2, batch_size=8, threads=2, lr=3e-3)
    return train(export_dir, model_dir, cfg, Console(quiet=True))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Good PNG/JPEG/DICOM images in a folder tree, plus corrupt, empty and non-image files."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(7)
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(synthetic_xray(rng, True, 150, 100)).save(root / "a.png")
    Image.fromarray(synthetic_xray(rng, False, 90, 120)).save(root / "sub" / "b.jpg")
    Image.fromarray(synthetic_xray(rng, False, 90, 120)).save(root / "sub" / "deeper" / "a.png")
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    (root / "empty.jpeg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    dicom = dicom_dataset(synthetic_xray(rng, True, 96, 80).astype(np.uint16) * 16, bits_stored=12)
    (root / "sub" / "c.dcm").write_bytes(dicom_bytes(dicom))
    (root / "bad.dcm").write_bytes(malformed_dicom())
    return root


def test_model_folder_is_complete(trained):
    folder = trained.model_dir
    for name in ("model.onnx", "model.pt", "model.json", "MODEL_CARD.md", "training.png"):
        assert (folder / name).is_file(), name
    meta = json.loads((folder / "model.json").read_text())
    assert meta["input_size"] == SIZE and meta["training"]["epochs_run"] == 2
    assert meta["temperature"] >= 1.0
    assert meta["thresholds"]["clear"] >= 0.0 and meta["thresholds"]["flag"] <= 1.0
    ops = meta["operating_points"]
    assert ops["flag"]["chosen"] <= ops["flag"]["point"]
    assert set(meta["metrics"]) == {"validation", "test"}
    card = (folder / "MODEL_CARD.md").read_text()
    assert "not a medical device" in card and "soft labels" in card
    assert f"{meta['thresholds']['flag']:.4f}" in card


def test_training_is_reproducible_with_a_seed(export_dir):
    splits = load_splits(export_dir, 32, seed=0, console=Console(quiet=True))
    cfg = TrainConfig(size=32, max_epochs=1, batch_size=8, threads=2)
    states = []
    for _ in range(2):
        model, history, _ = fit(
            splits, cfg, torch.device("cpu"), Console(quiet=True), time.monotonic()
        )
        states.append((model.state_dict(), history[0]["val_loss"]))
    (a, loss_a), (b, loss_b) = states
    assert loss_a == loss_b
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_onnx_and_torch_agree(trained, export_dir):
    meta = trained.meta
    assert meta["onnx_parity_max_abs_diff"] < 1e-4
    paths = sorted(export_dir.rglob("*.png"))
    pixels = load_batch(paths, SIZE)
    model = build(tuple(meta["widths"]), meta["ensemble"])  # 3 seeds by default
    model.load_state_dict(torch.load(trained.model_dir / TORCH_WEIGHTS, weights_only=True))
    logits, cams = torch_logits(model, pixels, torch.device("cpu"))
    p_torch = 1 / (1 + np.exp(-logits / meta["temperature"]))
    p_onnx, cams_onnx = infer.OnnxModel(trained.model_dir).probabilities(pixels)
    assert np.max(np.abs(p_torch - p_onnx)) < 1e-4
    assert np.allclose(cams, cams_onnx, atol=1e-3)
    assert cams.shape == (len(paths), SIZE // 16, SIZE // 16)


def test_augmentation_keeps_shape_and_range_and_is_seeded():
    x = torch.rand(4, 1, 32, 32)
    a = augment(x, AugmentConfig(), torch.Generator().manual_seed(1))
    b = augment(x, AugmentConfig(), torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.allclose(a, x)
    still = AugmentConfig(
        max_rotation_deg=0,
        max_shift=0,
        scale_range=(1, 1),
        brightness=0,
        contrast=0,
        gamma=0,
        noise_std=0,
    )
    x = x.clamp(1e-3, 1)
    assert torch.allclose(augment(x, still, torch.Generator()), x, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a lent one)")
def test_training_and_tta_run_on_cuda(export_dir, tmp_path):
    """`train` picks CUDA when present; it crashed there once (a CPU generator drew the
    augmentation for CUDA tensors, the TTA zoom grid lived on the CPU)."""
    cfg = TrainConfig(size=SIZE, max_epochs=2, batch_size=8, threads=2, ensemble=2)
    result = train(export_dir, tmp_path / "model", cfg, Console(quiet=True))
    assert result.meta["training"]["device"].startswith("cuda")
    assert result.meta["onnx_parity_max_abs_diff"] < 1e-4
    x = torch.rand(4, 1, 32, 32, device="cuda")
    on_gpu = augment(x, AugmentConfig(), torch.Generator().manual_seed(1))
    on_cpu = augment(x.cpu(), AugmentConfig(), torch.Generator().manual_seed(1))
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-4)  # one seed, the same views
    model = TriageNet((8, 16, 32, 64)).cuda()
    pixels = np.zeros((3, SIZE, SIZE), dtype=np.uint8)
    assert predict_logits(model, pixels, torch.device("cuda"), tta=True).shape == (3,)


def test_cam_mean_is_the_logit():
    model = TriageNet().eval()
    with torch.no_grad():
        logit, cam = model(torch.randn(2, 1, 64, 64))
    assert torch.allclose(cam.mean(dim=(1, 2)), logit)


def test_predict_cli_contract(trained, inputs, tmp_path):
    out, heat = tmp_path / "preds.csv", tmp_path / "heat"
    # A path that does not exist is a usage error, not a row of the CSV.
    missing = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(trained.model_dir),
            str(inputs),
            str(inputs / "missing.png"),
            "-o",
            str(out),
        ],
    )
    assert missing.exit_code == 2
    assert "missing.png" in missing.output and "does not exist" in missing.output
    assert not out.exists()
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(trained.model_dir),
            str(inputs),
            "-o",
            str(out),
            "--heatmaps",
            str(heat),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {Path(r["file"]).relative_to(inputs).as_posix(): r for r in csv.DictReader(out.open())}
    assert set(rows) == {
        "a.png",
        "sub/b.jpg",
        "sub/deeper/a.png",
        "sub/c.dcm",
        "sub/broken.png",
        "empty.jpeg",
        "bad.dcm",
    }  # notes.txt: not an image
    for name in ("a.png", "sub/b.jpg", "sub/deeper/a.png", "sub/c.dcm"):
        row = rows[name]
        assert row["error"] == "" and row["band"] in ("flag", "review", "clear")
        assert 0.0 <= float(row["p_pneumonia"]) <= 1.0
        assert Path(row["heatmap"]).is_file()
    assert "empty" in rows["empty.jpeg"]["error"]
    assert rows["sub/broken.png"]["error"] and rows["sub/broken.png"]["band"] == ""
    assert "DICOM" in rows["bad.dcm"]["error"] and rows["bad.dcm"]["p_pneumonia"] == ""
    # two inputs named a.png get two heatmaps
    assert rows["a.png"]["heatmap"] != rows["sub/deeper/a.png"]["heatmap"]


def test_bands_follow_the_stored_thresholds(trained, inputs):
    model = infer.OnnxModel(trained.model_dir)
    preds = infer.predict_paths(model, find_images([inputs]))
    good = [p for p in preds if p.error is None]
    assert len(good) == 4
    for p in good:
        expected = (
            "flag"
            if p.p_pneumonia >= model.flag_at
            else "clear"
            if p.p_pneumonia < min(model.clear_below, model.flag_at)
            else "review"
        )
        assert p.band == expected


def test_heatmap_matches_the_image(trained, inputs, tmp_path):
    model = infer.OnnxModel(trained.model_dir)
    [pred] = infer.predict_paths(model, [inputs / "a.png"], heatmap_dir=tmp_path)
    with Image.open(pred.heatmap) as im:
        assert im.size == (150, 100) and im.mode == "RGB"
        rgb = np.asarray(im).astype(int)
    assert rgb.std() > 0  # a real picture, not a blank


# Makes ``import torch`` fail as if PyTorch were not installed. (``sys.modules['torch'] =
# None`` is not enough: SciPy probes ``sys.modules['torch'].Tensor``.)
BLOCK_TORCH = (
    "import sys\n"
    "class _NoTorch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, _NoTorch())\n"
)


def test_predict_without_torch(trained, inputs, tmp_path):
    """The ONNX path must not need PyTorch: run the CLI with ``import torch`` blocked."""
    out = tmp_path / "preds.csv"
    code = BLOCK_TORCH + (
        "from cxrlabel.cli import main\n"
        f"sys.argv = ['cxrlabel', 'predict', '--model', {str(trained.model_dir)!r}, "
        f"{str(inputs)!r}, '-o', {str(out)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert sum(r["band"] != "" for r in rows) == 4


def test_train_without_torch_fails_cleanly(tmp_path):
    code = BLOCK_TORCH + (
        "from cxrlabel.cli import main\n"
        f"sys.argv = ['cxrlabel', 'train', {str(tmp_path)!r}, '-o', {str(tmp_path / 'm')!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "cxrlabel[model]" in done.stderr


def test_train_rejects_a_folder_without_metadata(tmp_path):
    result = CliRunner().invoke(app, ["train", str(tmp_path), "-o", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "metadata.csv" in result.output


def test_model_opinion(trained, inputs, monkeypatch, tmp_path):
    monkeypatch.delenv(infer.MODEL_DIR_ENV, raising=False)
    assert infer.model_opinion(inputs / "a.png") is None
    assert infer.model_opinion(inputs / "a.png", model_dir=tmp_path) is None  # not a model
    monkeypatch.setenv(infer.MODEL_DIR_ENV, str(trained.model_dir))
    opinion = infer.model_opinion(inputs / "a.png")
    assert opinion["title"].startswith("Model opinion")
    assert opinion["band"] in ("flag", "review", "clear")
    assert opinion["heatmap_data_url"].startswith("data:image/png;base64,")
    broken = infer.model_opinion(inputs / "sub" / "broken.png")
    assert broken["error"] and "p_pneumonia" not in broken


def test_balanced_classes_change_the_training_and_not_the_default(export_dir):
    splits = load_splits(export_dir, 32, seed=0, console=Console(quiet=True))
    soft = splits["train"].soft
    assert 0 < soft.mean() < 1  # both classes present: the weight is finite
    states = {}
    for balance in (False, True):
        cfg = TrainConfig(size=32, max_epochs=1, batch_size=8, threads=2, balance_classes=balance)
        model, history, _ = fit(
            splits, cfg, torch.device("cpu"), Console(quiet=True), time.monotonic()
        )
        assert np.isfinite(history[0]["train_loss"])
        states[balance] = model.state_dict()
    assert any(not torch.equal(states[False][k], states[True][k]) for k in states[False])
    assert TrainConfig().balance_classes is False
