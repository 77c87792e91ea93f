"""Gold proposals: the expert confirms, in the browser, the test questions the crowd's own
agreement proposes (the web side of ``cxrlabel gold sample --from-crowd`` and
``cxrlabel quality confirm-gold``; issue 17).

- ``GET /gold-proposals/{job}``: the clearest finalised images the crowd agreed on, drawn by the
  same rule as the CLI (``design.crowdgold.draw_proposals``: balanced per crowd label,
  ``?n=`` images, default 20, from the clearest ``?clearest=`` fraction, default 0.5), each in
  the image viewer with the crowd's answers as counts (never who gave them), and a form.
- ``POST /gold-proposals/{job}/{public_id}``: the expert's label and reason, recorded by the
  CLI's own path (``quality.crowdconfirm.confirm_answers``): the crowd's label -> ``easy`` gold
  with that reason; another label -> the expert's correction, no gold. Then back to the list
  (303), which says what was recorded.

Experts and admins only (the review queue's rule): an annotator gets 403, so gold answers and
other people's answers never reach an annotator's browser. A second answer on the same image (a
double click, the back button, a second expert) records nothing: the same answer by the same
expert is acknowledged as already recorded; any other is refused with what was recorded
before, and the expert's own words are shown back so nothing typed is lost.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import RedirectResponse, Response

from cxrlabel.design.crowdgold import Answered, crowd_votes, draw_proposals
from cxrlabel.design.goldbank import GoldImportError
from cxrlabel.jobspec import JobSpec
from cxrlabel.quality.crowdconfirm import confirm_answers, earlier_answer
from cxrlabel.quality.review_summary import crowd_summary
from cxrlabel.quality.store import ReviewConflict, lock_job
from cxrlabel.storage.models import ExpertReview, Image, Role, User, utcnow
from cxrlabel.web.deps import csrf_protect, get_db, job_and_spec, render, require_role

router = APIRouter(include_in_schema=False)
expert = require_role(Role.EXPERT, Role.ADMIN)

DEFAULT_COUNT = 20
MAX_COUNT = 200
DEFAULT_CLEAREST = 0.5  # the clearer half of each label's candidates: teaching cases


def _draw_settings(request: Request) -> tuple[int, float]:
    """``?n=`` and ``?clearest=``, within the CLI's bounds (a bad value: 400, not a crash)."""
    try:
        n = int(request.query_params.get("n", DEFAULT_COUNT))
        fraction = float(request.query_params.get("clearest", DEFAULT_CLEAREST))
    except ValueError:
        raise HTTPException(400, "n must be a whole number and clearest a fraction") from None
    if not 1 <= n <= MAX_COUNT or not 0.0 < fraction <= 1.0:
        raise HTTPException(400, f"n must be 1 to {MAX_COUNT} and clearest in (0, 1]")
    return n, fraction


def _page(request: Request, job_name: str, extra: dict, status_code: int = 200) -> Response:
    """The list of proposals, with whatever ``extra`` says (outcome, error, kept input)."""
    n, fraction = _draw_settings(request)
    with get_db(request).read_session() as s:
        job, spec = job_and_spec(s, job_name)
        try:
            proposals = draw_proposals(s, job, spec, n, clearest_fraction=fraction)
            nothing = None
        except ValueError as exc:
            proposals, nothing = [], str(exc)
        votes = crowd_votes(s, job, [p.image.id for p in proposals])
        items = [
            {
                "public_id": p.image.public_id,
                "label": p.label,
                "label_text": label_text(spec, p.label),
                "confidence": p.confidence,
                "clarity": p.clarity,
                "answers": votes[p.image.id],
                "summary": crowd_summary(
                    p.label, p.confidence, votes[p.image.id], spec.certainty_weights
                ),
            }
            for p in proposals
        ]
    context = {"job": job, "spec": spec, "items": items, "nothing": nothing, "n": n}
    context["clearest"] = fraction
    return render(request, "quality/gold_proposals.html", context | extra, status_code)


@router.get("/gold-proposals/{job_name}")
def proposals_page(request: Request, job_name: str, user: User = Depends(expert)) -> Response:
    return _page(request, job_name, {"outcome": _outcome(request, job_name)})


def _outcome(request: Request, job_name: str) -> str | None:
    """What the answer the list was redirected from recorded, read back from the database (not
    from the URL: the page says what is stored)."""
    public_id = request.query_params.get("done")
    if not public_id:
        return None
    with get_db(request).read_session() as s:
        job, spec = job_and_spec(s, job_name)
        found = s.execute(
            select(ExpertReview)
            .join(Image, Image.id == ExpertReview.image_id)
            .where(Image.public_id == public_id, Image.job_id == job.id)
        ).scalar_one_or_none()
        if found is None:
            return None
        return _recorded_text(public_id, found, label_text(spec, found.label))


def _recorded_text(public_id: str, review: ExpertReview, label: str) -> str:
    if review.promoted_to_gold:
        return (
            f"Recorded: image {public_id} is now a test question (easy), answer {label}, "
            "with your reason. Annotators who miss it are shown that reason."
        )
    return (
        f"Recorded as a correction: image {public_id} is labelled {label} by you. The crowd "
        "said otherwise, so it is not a test question."
    )


@router.post("/gold-proposals/{job_name}/{public_id}", dependencies=[Depends(csrf_protect)])
def proposal_answer(
    request: Request,
    job_name: str,
    public_id: str,
    answer: str = Form("", max_length=32),
    reason: str = Form("", max_length=4000),
    user: User = Depends(expert),
) -> Response:
    mine = Answered("", public_id, answer, reason)
    try:
        with get_db(request).session() as s:
            refusal = _record(s, job_name, mine, user)
    except _AnsweredMeanwhile as exc:  # rolled back: read what the other expert recorded
        with get_db(request).read_session() as s:
            taken = earlier_answer(s, exc.image_id)
            spec = job_and_spec(s, job_name)[1]
            why = _taken_text(taken, user, spec) if taken else "another expert answered first"
        refusal = why, 409
    if refusal is not None:  # nothing recorded: the list again, the expert's words kept
        why, status = refusal
        context = {"error": why, "error_image": public_id, "kept": mine}
        return _page(request, job_name, context, status_code=status)
    return RedirectResponse(f"/gold-proposals/{job_name}?done={public_id}", status_code=303)


def _record(s: Session, job_name: str, mine: Answered, user: User) -> tuple[str, int] | None:
    """Record the answer; or why not, with the HTTP status (nothing recorded then)."""
    job, spec = job_and_spec(s, job_name)
    image_id = s.scalar(
        select(Image.id).where(Image.public_id == mine.image, Image.job_id == job.id)
    )
    if image_id is None:
        raise HTTPException(404, "no such image in this job")
    # The job's lock before anything is read (PostgreSQL; SQLite is serial): two experts
    # answering at the same instant are decided one after the other, so the second reads the
    # first's answer and is told about it (409) instead of failing the checks below (400).
    lock_job(s, job)
    before = earlier_answer(s, image_id)
    if before is not None:
        if before.expert_id == user.id and before.label == mine.answer.strip():
            return None  # the same answer again (double click, back button): recorded once
        return _taken_text(before, user, spec), 409
    try:
        confirm_answers(s, job, spec, s.get_one(User, user.id), [mine], mine.image, utcnow())
    except GoldImportError as exc:
        return "; ".join(exc.problems), 400
    except ReviewConflict:  # the unique review per image caught what the lock did not
        raise _AnsweredMeanwhile(image_id) from None
    return None


class _AnsweredMeanwhile(Exception):
    """Leaves the transaction (rolled back) so the other expert's answer can be read."""

    def __init__(self, image_id: int) -> None:
        super().__init__(image_id)
        self.image_id = image_id


def _taken_text(before: ExpertReview, user: User, spec: JobSpec) -> str:
    who = "You" if before.expert_id == user.id else "Another expert"
    what = "made it a test question" if before.promoted_to_gold else "corrected the crowd"
    return (
        f"{who} already answered this image ({label_text(spec, before.label)}: {what}); "
        "your answer was not recorded"
    )


def label_text(spec: JobSpec, value: str) -> str:
    """The label as the job's question words it (e.g. "Pneumonia"), for messages."""
    return next((lab.text for lab in spec.question.labels if lab.value == value), value)
