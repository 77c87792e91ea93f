"""The triage model over HTTP: POST an X-ray, get p(pneumonia), a band and a heatmap.

Experts and admins only: the model's opinion is for people who can weigh it, never for
annotators (it would anchor their judgments). The model folder is ``$CXRLABEL_MODEL_DIR`` or
``<data dir>/model``; inference uses ONNX Runtime only (see cxrlabel/model/infer.py).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, File, HTTPException, Request, UploadFile

from cxrlabel.storage.models import Role, User
from cxrlabel.web.deps import csrf_protect, require_role

router = APIRouter(prefix="/api/model", tags=["model"])
reviewer = require_role(Role.EXPERT, Role.ADMIN)
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # a large uncompressed DICOM is ~30 MB


def _model(request: Request):  # OnnxModel, imported lazily
    try:
        from cxrlabel.model.infer import ModelUnavailable, default_model_dir, get_model
    except ImportError:  # pragma: no cover - numpy/Pillow are core dependencies
        raise HTTPException(503, "the model package cannot be imported") from None
    folder = default_model_dir(request.app.state.settings.data_dir)
    try:
        return get_model(folder)
    except FileNotFoundError:
        raise HTTPException(
            503,
            "no triage model installed: run `cxrlabel train DATASET "
            f"-o {folder}` or set CXRLABEL_MODEL_DIR",
        ) from None
    except ModelUnavailable as exc:
        raise HTTPException(503, str(exc)) from None


@router.get("")
def model_info(request: Request, user: User = Depends(reviewer)) -> dict:
    """Which model answers, its thresholds and its validation/test figures."""
    model = _model(request)
    meta = model.meta
    return {
        "model_dir": str(Path(model.model_dir).resolve()),
        "input_size": meta["input_size"],
        "temperature": meta["temperature"],
        "thresholds": meta["thresholds"],
        "metrics": meta.get("metrics", {}),
        "card": "MODEL_CARD.md in the model folder",
    }


@router.post("/predict", dependencies=[Depends(csrf_protect)])
def predict(
    request: Request,
    image: UploadFile = File(..., description="A JPEG, PNG or DICOM file"),
    heatmap: bool = True,
    user: User = Depends(reviewer),
) -> dict:
    """p_pneumonia, band (flag | review | clear) and a heatmap as a PNG data URL."""
    from cxrlabel.ingest.decode import DecodeError
    from cxrlabel.model.infer import predict_one

    model = _model(request)
    data = image.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"file larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    try:
        return predict_one(model, data, heatmap=heatmap)
    except DecodeError as exc:
        raise HTTPException(422, f"cannot read the image: {exc.reason}") from None
