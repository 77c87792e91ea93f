"""Synthetic chest-X-ray-like images and a tiny export folder for the model tests.

A bright "opacity" inside one of two dark "lungs" stands in for pneumonia, so a small CNN can
learn the class in a couple of epochs at 64 px. Sizes vary and are not square, to exercise the
squash and the heatmap geometry.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlabel.model.reference import METADATA_COLUMNS, metadata_row


def synthetic_xray(rng: np.random.Generator, pneumonia: bool, width: int, height: int):
    yy, xx = np.mgrid[0:height, 0:width]
    y, x = yy / height, xx / width
    img = np.full((height, width), 170.0 + 20 * rng.random())
    for cx in (0.32, 0.68):
        inside = ((x - cx) / 0.14) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1
        img[inside] = 55.0 + 15 * rng.random()
    if pneumonia:
        cx = rng.choice([0.32, 0.68]) + rng.uniform(-0.05, 0.05)
        cy = rng.uniform(0.35, 0.65)
        img += 110 * np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.07**2)))
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_synthetic_export(out: Path, n: int = 48, seed: int = 0) -> Path:
    """An export-layout folder: 60 % train, 25 % validation, 15 % test, soft labels."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        pneumonia = i % 2 == 0
        split = "train" if i < 0.6 * n else "validation" if i < 0.85 * n else "test"
        label = "PNEUMONIA" if pneumonia else "NORMAL"
        p = float(rng.uniform(0.75, 1.0)) if pneumonia else float(rng.uniform(0.0, 0.25))
        rel = Path(split) / label / f"img{i:03d}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        width, height = int(rng.integers(80, 120)), int(rng.integers(70, 110))
        Image.fromarray(synthetic_xray(rng, pneumonia, width, height)).save(out / rel)
        rows.append(metadata_row(rel.as_posix(), label, p, split, f"P{i // 2}", decimals=3))
    with (out / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return out


def untrained_model_dir(folder: Path, size: int = 64, seed: int = 0) -> Path:
    """A model folder with random weights (for contract tests that need no training)."""
    import json

    import torch

    from cxrlabel.model.net import TriageNet
    from cxrlabel.model.train import export_onnx

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(TriageNet().eval(), size, folder / "model.onnx")
    meta = {
        "input_size": size,
        "temperature": 1.0,
        "thresholds": {"flag": 0.6, "clear": 0.3},
        "widths": [16, 32, 64, 128],
    }
    (folder / "model.json").write_text(json.dumps(meta))
    return folder
