"""Prediction with ONNX Runtime only (no PyTorch): the inference contract of a model folder.

A model folder holds ``model.onnx`` (inputs ``image`` (N, 1, S, S) float32; outputs ``logit``
(N,) and ``cam`` (N, S/16, S/16)), ``model.json`` (preprocessing, temperature, thresholds) and
``MODEL_CARD.md``. ``predict_paths`` powers ``cxrlabel predict``, ``predict_one`` the API and
``model_opinion`` the expert review page.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlabel.ingest.decode import DecodeError, decode_image
from cxrlabel.model.bands import BAND_TEXT, band, sigmoid
from cxrlabel.model.data import normalise, squash

MODEL_JSON, ONNX_FILE, CARD_FILE = "model.json", "model.onnx", "MODEL_CARD.md"
MODEL_DIR_ENV = "CXRLABEL_MODEL_DIR"
OPINION_TITLE = "Model opinion (triage aid, not a diagnosis)"
CSV_COLUMNS = ("file", "p_pneumonia", "band", "error", "heatmap")


class ModelUnavailable(Exception):
    """No usable model folder, or ONNX Runtime is not installed."""


def load_meta(model_dir: Path) -> dict:
    path = Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise ModelUnavailable(f"{path} not found: not a model folder made by `cxrlabel train`")
    return json.loads(path.read_text(encoding="utf-8"))


class OnnxModel:
    """A trained model folder served by ONNX Runtime (CUDA when present, else CPU)."""

    def __init__(self, model_dir: Path, meta: dict | None = None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelUnavailable(
                "onnxruntime is not installed: pip install 'cxrlabel[model]'"
            ) from None
        self.model_dir = Path(model_dir)
        self.meta = meta or load_meta(self.model_dir)
        onnx_path = self.model_dir / ONNX_FILE
        if not onnx_path.is_file():
            raise ModelUnavailable(f"{onnx_path} not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.log_severity_level = 3
        # No busy-waiting between runs: the web app and the CLI share cores with other work.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [
            p
            for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
            if p in ort.get_available_providers()
        ]
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.size = int(self.meta["input_size"])
        self.temperature = float(self.meta["temperature"])
        self.flag_at = float(self.meta["thresholds"]["flag"])
        self.clear_below = float(self.meta["thresholds"]["clear"])

    def probabilities(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated p(pneumonia) (N,) and CAMs (N, h, w) of squashed uint8 (N, S, S)."""
        logit, cam = self.session.run(["logit", "cam"], {"image": normalise(pixels)})
        return sigmoid(logit / self.temperature), cam

    def band(self, p: float) -> str:
        return band(p, self.flag_at, self.clear_below)


@dataclass
class Prediction:
    file: str
    p_pneumonia: float | None = None
    band: str | None = None
    error: str | None = None
    heatmap: str | None = None  # path of the heatmap PNG, when asked for

    def row(self) -> dict[str, str]:
        p = "" if self.p_pneumonia is None else f"{self.p_pneumonia:.6f}"
        return {
            "file": self.file,
            "p_pneumonia": p,
            "band": self.band or "",
            "error": self.error or "",
            "heatmap": self.heatmap or "",
        }


def _decode(source: Path | bytes) -> np.ndarray:
    return decode_image(source).pixels


def predict_paths(
    model: OnnxModel,
    paths: Iterable[Path],
    heatmap_dir: Path | None = None,
    batch_size: int = 32,
    on_done: Callable[[], None] | None = None,
) -> list[Prediction]:
    """One prediction per path, in order; an undecodable file gets ``error``, never a crash."""
    paths = list(paths)
    results = [Prediction(file=str(p)) for p in paths]
    names: set[str] = set()
    for start in range(0, len(paths), batch_size):
        decoded: list[tuple[int, np.ndarray]] = []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                decoded.append((i, _decode(paths[i])))
            except DecodeError as exc:
                results[i].error = exc.reason
            except Exception as exc:  # one bad input must not stop a batch
                results[i].error = f"cannot read image ({type(exc).__name__})"
            if on_done:
                on_done()
        if not decoded:
            continue
        batch = np.stack([squash(gray, model.size) for _, gray in decoded])
        probs, cams = model.probabilities(batch)
        for (i, gray), p, cam in zip(decoded, probs, cams, strict=True):
            results[i].p_pneumonia, results[i].band = float(p), model.band(float(p))
            if heatmap_dir is not None:
                results[i].heatmap = str(
                    _save_heatmap(heatmap_dir, paths[i], gray, cam, model.temperature, names)
                )
    return results


def _save_heatmap(
    folder: Path,
    source: Path,
    gray: np.ndarray,
    cam: np.ndarray,
    temperature: float,
    taken: set[str],
) -> Path:
    from cxrlabel.model.gradcam import cam_overlay

    folder.mkdir(parents=True, exist_ok=True)
    name, n = f"{source.stem}.png", 1
    while name in taken:  # same stem in two folders: keep both
        n += 1
        name = f"{source.stem}-{n}.png"
    taken.add(name)
    out = folder / name
    cam_overlay(gray, cam, temperature).save(out)
    return out


def write_csv(predictions: list[Prediction], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(p.row() for p in predictions)


def predict_one(model: OnnxModel, source: Path | bytes, heatmap: bool = True) -> dict:
    """JSON-ready prediction for one image (path or bytes); raises DecodeError."""
    from cxrlabel.model.gradcam import cam_overlay

    gray = _decode(source)
    probs, cams = model.probabilities(squash(gray, model.size)[None])
    p = float(probs[0])
    result = {
        "title": OPINION_TITLE,
        "p_pneumonia": round(p, 6),
        "band": model.band(p),
        "band_text": BAND_TEXT[model.band(p)],
        "thresholds": {"flag": model.flag_at, "clear": model.clear_below},
    }
    if heatmap:
        buffer = io.BytesIO()
        cam_overlay(gray, cams[0], model.temperature).save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        result["heatmap_data_url"] = f"data:image/png;base64,{encoded}"
    return result


@functools.lru_cache(maxsize=4)
def _cached_model(model_dir: str, _stamp: float) -> OnnxModel:
    return OnnxModel(Path(model_dir))


def get_model(model_dir: Path) -> OnnxModel:
    """A cached OnnxModel, reloaded when the folder's model.json changes."""
    stamp = (Path(model_dir) / MODEL_JSON).stat().st_mtime
    return _cached_model(str(Path(model_dir).resolve()), stamp)


def default_model_dir(data_dir: Path | None = None) -> Path:
    """``$CXRLABEL_MODEL_DIR``, else ``<data dir>/model`` (train with ``-o <data dir>/model``)."""
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV])
    if data_dir is None:
        from cxrlabel.config import Settings

        data_dir = Settings.from_env().data_dir
    return Path(data_dir) / "model"


def model_opinion(image_path: Path | str, model_dir: Path | str | None = None) -> dict | None:
    """The model's opinion for the expert review page, or None when no model is set up.

    ``model_dir`` defaults to ``default_model_dir()``. The dict has ``title`` (show it: the
    opinion must read as a model's, not an expert's), ``p_pneumonia``, ``band``, ``band_text``
    and ``heatmap_data_url``; or ``error`` when the image cannot be decoded.
    """
    model_dir = Path(model_dir) if model_dir else default_model_dir()
    if not (model_dir / MODEL_JSON).is_file():
        return None
    try:
        model = get_model(model_dir)
    except ModelUnavailable:
        return None
    try:
        return predict_one(model, Path(image_path))
    except DecodeError as exc:
        return {"title": OPINION_TITLE, "error": exc.reason}
