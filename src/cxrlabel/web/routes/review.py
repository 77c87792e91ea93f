"""Expert review: the queue of uncertain images and the page to record a final label.

Experts see the image in the viewer and the crowd's answers as counts per label and certainty;
never who answered. A label finalises the image and can make it a new gold item in one click.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.responses import RedirectResponse, Response

from cxrlabel.quality import commands, views
from cxrlabel.quality.review_summary import crowd_summary
from cxrlabel.storage.models import Image, Role, User, utcnow
from cxrlabel.web.deps import csrf_protect, get_db, job_and_spec, render, require_role

router = APIRouter()
expert = require_role(Role.EXPERT, Role.ADMIN)


class ExpertLabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=32)
    reason: str | None = Field(default=None, max_length=4000)
    promote_to_gold: bool = False
    gold_reason: str | None = Field(default=None, max_length=4000)


def _image_id(session, job_id: int, public_id: str) -> int:
    image_id = session.scalar(
        select(Image.id).where(Image.public_id == public_id, Image.job_id == job_id)
    )
    if image_id is None:
        raise HTTPException(404, "no such image in this job")
    return image_id


def _record(
    request: Request, job_name: str, public_id: str, user: User, body: ExpertLabelIn
) -> dict:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        review = commands.record_expert_label(
            s,
            job,
            spec,
            s.get_one(User, user.id),
            _image_id(s, job.id, public_id),
            body.label,
            body.reason,
            utcnow(),
            promote_to_gold=body.promote_to_gold,
            gold_reason=body.gold_reason,
        )
        return {
            "image": public_id,
            "label": review.label,
            "status": "gold" if review.promoted_to_gold else "expert",
            "promoted_to_gold": review.promoted_to_gold,
        }


# --- HTML ----------------------------------------------------------------------------------------


@router.get("/review/{job_name}", include_in_schema=False)
def queue_page(request: Request, job_name: str, user: User = Depends(expert)) -> Response:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        items = views.review_queue(s, job, spec)
    return render(
        request,
        "quality/review_queue.html",
        {
            "job": job,
            "items": items,
            "spec": spec,
            "summaries": _summaries(items, spec),
            "done": request.query_params.get("done") == "1",
        },
    )


def _summaries(items: list, spec) -> dict[str, str]:
    weights = spec.certainty_weights
    return {
        it.public_id: crowd_summary(it.label, it.confidence, it.answers, weights) for it in items
    }


@router.get("/review/{job_name}/{public_id}", include_in_schema=False)
def review_page(
    request: Request, job_name: str, public_id: str, user: User = Depends(expert)
) -> Response:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        image_id = _image_id(s, job.id, public_id)
        queue = views.review_queue(s, job, spec)
        item = next((it for it in queue if it.image_id == image_id), None)
        image = s.get_one(Image, image_id)
    if item is None:
        raise HTTPException(404, f"this image is not waiting for review (it is {image.status})")
    position = [it.image_id for it in queue].index(image_id) + 1
    return render(
        request,
        "quality/review_item.html",
        {
            "job": job,
            "spec": spec,
            "item": item,
            "position": position,
            "total": len(queue),
            "summary": _summaries([item], spec)[item.public_id],
            "opinion": _model_opinion(request, image),
        },
    )


def _model_opinion(request: Request, image: Image) -> dict | None:
    """The triage model's opinion when a model is installed (never needs PyTorch)."""
    try:
        from cxrlabel.model.infer import default_model_dir, model_opinion
    except ImportError:  # the [model] extra (onnxruntime) is not installed
        return None
    data_dir = request.app.state.settings.data_dir
    try:
        return model_opinion(data_dir / image.rendition_path, default_model_dir(data_dir))
    except ImportError:
        return None


@router.post(
    "/review/{job_name}/{public_id}", include_in_schema=False, dependencies=[Depends(csrf_protect)]
)
def review_submit(
    request: Request,
    job_name: str,
    public_id: str,
    label: str = Form(...),
    reason: str = Form(""),
    promote_to_gold: str = Form(""),
    gold_reason: str = Form(""),
    user: User = Depends(expert),
) -> Response:
    _record(
        request,
        job_name,
        public_id,
        user,
        ExpertLabelIn(
            label=label,
            reason=reason or None,
            promote_to_gold=bool(promote_to_gold),
            gold_reason=gold_reason or None,
        ),
    )
    # Straight on to the next image (the queue is only a detour); the queue when none is left.
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        queue = views.review_queue(s, job, spec)
    if queue:
        return RedirectResponse(f"/review/{job_name}/{queue[0].public_id}", status_code=303)
    return RedirectResponse(f"/review/{job_name}?done=1", status_code=303)


# --- JSON API ------------------------------------------------------------------------------------


@router.get("/api/jobs/{job_name}/review", summary="Expert review queue, most uncertain first")
def api_queue(request: Request, job_name: str, user: User = Depends(expert)) -> list[dict]:
    with get_db(request).session() as s:
        job, spec = job_and_spec(s, job_name)
        items = views.review_queue(s, job, spec)
    return [{k: v for k, v in asdict(it).items() if k != "image_id"} for it in items]


@router.post(
    "/api/jobs/{job_name}/review/{public_id}",
    summary="Record an expert's final label",
    dependencies=[Depends(csrf_protect)],
)
def api_record(
    request: Request,
    job_name: str,
    public_id: str,
    body: ExpertLabelIn,
    user: User = Depends(expert),
) -> dict:
    return _record(request, job_name, public_id, user, body)
